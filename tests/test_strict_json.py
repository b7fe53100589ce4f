"""Every JSON file and --json output absclip writes is strict JSON; a resumed run keeps the timing of all its parts."""

from __future__ import annotations

import json
import shutil

import pytest

from absclip.cli.main import main
from absclip.engines.results import run_timing
from absclip.io.files import json_text

from .test_cli import MODEL, PHOTOS, SMALL


def _refuse(constant: str) -> None:
    raise ValueError(f"not strict JSON: {constant}")


def strict(text: str):
    """Parse like JSON.parse: NaN, Infinity and -Infinity are errors."""
    return json.loads(text, parse_constant=_refuse)


def strict_lines(path):
    return [strict(line) for line in path.read_text().splitlines()]


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    """An ImageFolder with two classes (acc5 undefined)."""
    root = tmp_path_factory.mktemp("twoclass")
    for cls, photos in {"cat": ["chelsea.png", "astronaut.png"], "coffee": ["coffee.png", "rocket.jpg"]}.items():
        (root / cls).mkdir()
        for p in photos:
            shutil.copy(PHOTOS / p, root / cls / p)
    return root


def test_json_text_is_strict():
    assert json_text({"a": float("nan"), "b": [float("inf"), 1.5]}) == '{"a": null, "b": [null, 1.5]}'
    assert strict(json_text({"a": 1})) == {"a": 1}


def test_eval_two_classes_strict_json_and_resumed_timing(tmp_path, folder, capsys):
    out = tmp_path / "results.json"
    args = ["eval", "--data", str(folder), "--classes", "cat,coffee", "--methods", "clip,abs", "--output", str(out),
            "--batch-size", "2", "--no-progress", *MODEL, *SMALL]
    assert main([*args, "--json", "--report", str(tmp_path / "report.html")]) == 0
    printed = strict(capsys.readouterr().out)
    doc = strict(out.read_text())
    assert printed == doc
    assert all(r["metrics"]["acc5"] is None and r["metrics"]["acc1"] is not None for r in doc["results"])
    records = strict_lines(tmp_path / "results.predictions.jsonl")
    assert len(records) == 8
    assert "n/a" in (tmp_path / "report.html").read_text()
    t1 = doc["timing"]
    assert t1["parts"] == 1 and t1["seconds"] > 0 and t1["images_per_s"] > 0 and t1["images_this_run"] == 4

    # the text table shows an undefined metric as n/a
    assert main(args) == 0
    table = capsys.readouterr().out
    assert "n/a" in table and "nan" not in table.lower()
    again = strict(out.read_text())["timing"]  # nothing left to do: the timing of the run is kept
    assert (again["seconds"], again["images_per_s"], again["parts"]) == (t1["seconds"], t1["images_per_s"], 1)
    assert again["images_this_run"] == 0
    assert f"{t1['seconds']:.1f} s" in table.splitlines()[0]

    # lose the last image's records (as if interrupted): the resumed run adds a part
    pred = tmp_path / "results.predictions.jsonl"
    lines = pred.read_text().splitlines()
    last = json.loads(lines[-1])["path"]
    pred.write_text("".join(x + "\n" for x in lines if json.loads(x)["path"] != last))
    # per-method files: no earlier document of theirs, so the first part's seconds come from its records
    assert main([*args, "--output", str(tmp_path / "res_{method}.json"), "--predictions", str(pred)]) == 0
    capsys.readouterr()
    per = strict((tmp_path / "res_abs.json").read_text())["absclip"]["timing"]
    assert per["parts"] == 2 and per["images_this_run"] == 1 and per["run_parts"][0].get("estimated")
    pred.write_text("".join(x + "\n" for x in lines if json.loads(x)["path"] != last))
    assert main(args) == 0
    capsys.readouterr()
    t3 = strict(out.read_text())["timing"]
    assert t3["parts"] == 2 and [p["images"] for p in t3["run_parts"]] == [3, 1]
    assert t3["run_parts"][0]["seconds"] == t1["seconds"] and "estimated" not in t3["run_parts"][0]
    assert t3["seconds"] == pytest.approx(t1["seconds"] + t3["seconds_this_run"], abs=2e-3)
    assert t3["images_per_s"] == pytest.approx(4 / t3["seconds"], rel=1e-3)


def test_label_classify_explain_strict_json(tmp_path, folder, capsys):
    out = tmp_path / "labels"
    args = ["label", str(folder), "--classes", "cat,coffee", "--method", "clip", "--output", str(out),
            "--no-progress", "--json", *MODEL]
    assert main(args) == 0
    summary = strict(capsys.readouterr().out)
    assert strict((out / "_summary.json").read_text()) == summary
    strict_lines(out / "predictions.jsonl")
    assert summary["timing"]["parts"] == 1 and summary["timing"]["seconds"] > 0
    assert main(args) == 0  # finished: re-running keeps the timing
    again = strict(capsys.readouterr().out)["timing"]
    assert (again["seconds"], again["images_per_s"], again["parts"]) == (
        summary["timing"]["seconds"], summary["timing"]["images_per_s"], 1)

    assert main(["classify", str(PHOTOS / "chelsea.png"), "--classes", "cat,coffee", "--json", *MODEL, *SMALL]) == 0
    strict(capsys.readouterr().out)
    assert main(["explain", str(PHOTOS / "chelsea.png"), "--classes", "cat,coffee", "--out", str(tmp_path / "e.png"),
                 "--json", *MODEL, *SMALL]) == 0
    strict(capsys.readouterr().out)


def test_run_timing_parts():
    recs = [{"path": p, "method": "m", "attempt": a, "seconds": 0.5} for p, a in
            [("a", "01"), ("b", "01"), ("c", "02"), ("x", "02")]]
    t = run_timing(recs, ["a", "b", "c"], attempt="03", seconds=1.0, previous=[{"attempt": "01", "seconds": 4.0}])
    # part 01 measured before, part 02 interrupted (estimated from its records), this run did nothing
    assert t["run_parts"] == [{"attempt": "01", "images": 2, "seconds": 4.0},
                              {"attempt": "02", "images": 1, "seconds": 0.5, "estimated": True}]
    assert (t["seconds"], t["parts"], t["images_this_run"], t["images_per_s"]) == (4.5, 2, 0, round(3 / 4.5, 4))

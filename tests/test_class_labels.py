"""Duplicate class names: an error on the command line, distinct display labels where a file tells them apart."""

from __future__ import annotations

import json
import logging

import pytest

from absclip.cli.main import main
from absclip.errors import AbsclipError
from absclip.text.banks import match_bank
from absclip.text.classes import ClassList, display_labels, load_classes

from .conftest import DATA
from .test_cli import MODEL, PHOTOS, SMALL

IMAGENET_TSV = DATA / "imagenet-meta" / "imagenet_classes.tsv"
IMAGENET_JSON = DATA / "classnames" / "imagenet.json"


def test_command_line_duplicates_are_an_error(capsys):
    with pytest.raises(AbsclipError, match=r"Duplicate class names: 'cat' \(2x\).*own name"):
        load_classes(classes="cat,dog,cat")
    rc = main(["classify", str(PHOTOS / "chelsea.png"), "--classes", "cat,dog,cat", *MODEL, *SMALL])
    err = capsys.readouterr().err
    assert rc != 0 and "Duplicate class names: 'cat' (2x)" in err and len(err.strip().splitlines()) == 1


def test_imagenet_files_keep_both_classes_with_distinct_labels(caplog):
    caplog.set_level(logging.INFO)
    tsv = load_classes(classes_file=IMAGENET_TSV)
    assert len(tsv) == 1000 and len(set(tsv.labels)) == 1000
    assert [tsv.labels[i] for i in (657, 744, 836, 837)] == [
        "missile", "missile (projectile)", "sunglasses (sunglass)", "sunglasses (dark glasses)"]
    assert tsv.names[744] == "missile"  # the prompts keep the canonical name
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING]
    js = load_classes(classes_file=IMAGENET_JSON)  # 'crane' twice with no synonym: told apart by index
    assert len(set(js.labels)) == 1000
    assert [js.labels[i] for i in (134, 517, 638, 639)] == ["crane (#134)", "crane (#517)", "maillot",
                                                           "maillot (tank suit)"]
    assert js.index("crane (#517)") == 517 and tsv.index("missile (projectile)") == 744


def test_display_label_rule():
    assert display_labels(["a", "b"], [("a",), ("b",)]) == ("a", "b")
    # a synonym shared by the group does not tell them apart; the first one that does is used
    assert display_labels(["x", "x", "x"], [("x", "y", "p"), ("x", "y", "q"), ("x",)]) == ("x (p)", "x (q)", "x")
    # a label colliding with another class's name falls back to the index
    assert display_labels(["x (p)", "x", "x"], [("x (p)",), ("x", "p"), ("x",)]) == ("x (p)", "x (#1)", "x")


def test_descriptions_match_classes_sharing_a_name():
    classes = load_classes(classes_file=IMAGENET_TSV)
    sub = ClassList.from_names([list(classes.synonyms[i]) for i in (657, 744, 836, 837)], allow_duplicates=True)
    # SuS-X / CuPL style keys: a synonym unique to a class wins over the shared name
    out = match_bank(sub, {"missile": ["m"], "projectile": ["p"], "sunglass": ["s"], "sunglasses": ["g"]})
    assert out == [["m"], ["p"], ["s"], ["g"]]
    # keys written by display label (e.g. descriptions generated per label) match too
    keyed = {lab: [lab] for lab in sub.labels}
    assert match_bank(sub, keyed) == [[lab] for lab in sub.labels]


def test_classify_labels_are_distinct(tmp_path, capsys):
    f = tmp_path / "classes.json"
    f.write_text(json.dumps([["missile"], ["missile", "projectile"], ["tabby cat"]]))
    assert main(["classify", str(PHOTOS / "chelsea.png"), "--classes-file", str(f), "--top", "3", "--json",
                 *MODEL, *SMALL]) == 0
    labels = [p["label"] for p in json.loads(capsys.readouterr().out)[0]["predictions"]]
    assert sorted(labels) == ["missile", "missile (projectile)", "tabby cat"]

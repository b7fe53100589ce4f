"""Generic methods: a method declares its settings dataclass and needs no other code (API, CLI, specs)."""

from __future__ import annotations

import dataclasses
import json
import pickle
from dataclasses import dataclass

import pytest
import torch

from absclip.core.settings import ABSConfig, WCAConfig, setting
from absclip.errors import AbsclipError
from absclip.methods import Method, create_method, get_method_class, list_methods, register_method, unregister_method

from .conftest import CLIP_CFG, CLIP_WEIGHTS, DATA, DINO

PHOTO = DATA / "photos" / "coffee.png"
MODEL = ["--model", str(CLIP_CFG), "--pretrained", str(CLIP_WEIGHTS), "--attention-model", str(DINO), "--no-cache"]


@dataclass(frozen=True)
class ToySettings:
    """Settings of the toy method."""

    cli_title = "toy"  # a plain class attribute (no annotation): not a field

    pick: int = setting(0, "--toy-flag", "the class the toy method always ranks first (default: 0)")
    strength: float = 2.0

    def __post_init__(self) -> None:
        if self.pick < 0:
            raise AbsclipError(f"pick must be >= 0, got {self.pick}.")


@pytest.fixture
def toy():
    """Register the toy method for one test (and only for it)."""

    @register_method("toy-test")
    class ToyMethod(Method):
        """Toy: always ranks class ``pick`` first."""

        settings_type = ToySettings
        settings: ToySettings

        def prepare(self, inputs, encoder) -> None:
            self.n_classes = len(inputs.classes.names)

        def logits(self, ctx, seed):
            out = torch.zeros(len(ctx.items), self.n_classes)
            out[:, self.settings.pick % self.n_classes] = self.settings.strength
            return out

    yield ToyMethod
    unregister_method("toy-test")
    assert "toy-test" not in list_methods()


def test_create_method_settings():
    assert create_method("abs", top_k=5).settings.top_k == 5
    assert create_method("abs", ABSConfig(pixel_crops=3), top_k=5).settings == ABSConfig(pixel_crops=3, top_k=5)
    assert create_method("abs-fast").settings.pixel_crops == 16
    with pytest.raises(AbsclipError, match="Unknown ABSConfig setting"):
        create_method("abs", topk=5)
    with pytest.raises(AbsclipError, match="takes no settings"):
        create_method("clip", top_k=5)
    with pytest.raises(AbsclipError, match="Unknown method"):
        create_method("no-such-method")


def test_settings_errors_name_the_setting_not_a_flag():
    with pytest.raises(AbsclipError) as e:
        ABSConfig(top_k=0)
    assert "top_k" in str(e.value) and "--" not in str(e.value)
    with pytest.raises(AbsclipError, match="max_descriptions"):
        WCAConfig(max_descriptions=0)


def test_toy_method_through_the_api(toy, backbone):
    from absclip import Classifier

    assert create_method("toy-test", pick=2).settings == ToySettings(pick=2)
    clf = Classifier(backbone, settings=[ToySettings(pick=1)], use_cache=False).set_classes(["a", "b", "c"])
    assert clf.classify(str(PHOTO), method="toy-test", top=1)[0]["label"] == "b"
    assert clf.method("toy-test").config() == {"pick": 1, "strength": 2.0}


def test_toy_method_through_the_cli(toy, capsys):
    from absclip.cli.main import build_parser, main

    sub = build_parser()._subparsers._group_actions[0].choices  # type: ignore[union-attr]
    helps = {name: p.format_help() for name, p in sub.items() if name in ("classify", "eval")}
    for text in helps.values():
        assert "--toy-flag" in text and "the class the toy method always ranks first" in text
    assert "toy-test" in helps["classify"]  # method names in help come from the registry

    def top(*extra):
        args = ["classify", str(PHOTO), "--classes", "cat,coffee,rocket", "--method", "toy-test", "--top", "1",
                "--json", *MODEL, *extra]
        assert main(args) == 0
        return json.loads(capsys.readouterr().out)[0]["predictions"][0]["label"]

    assert top() == "cat"
    assert top("--toy-flag", "2") == "rocket"
    assert main(["methods", "--json"]) == 0
    rows = {r["method"]: r for r in json.loads(capsys.readouterr().out)}
    assert rows["toy-test"]["description"] == "Toy: always ranks class pick first."
    assert {"name": "pick", "default": 0, "flag": "--toy-flag",
            "help": "the class the toy method always ranks first (default: 0)"} in rows["toy-test"]["settings"]


def test_cli_settings_from_flags():
    """Every method flag reaches its setting; a shared flag sets every type that declares it."""
    from absclip.cli.main import build_parser
    from absclip.cli.options import settings_from_args

    args = build_parser().parse_args([
        "classify", "x.jpg", "--classes", "a,b", "--crops", "3", "--feature-crops", "4", "--top-k", "5",
        "--temperature", "0.1", "--score-temperature", "0.2", "--crop-ratio", "0.5,0.8", "--feature-crop-ratio",
        "0.4,0.7", "--feature-layer", "-2", "--max-descriptions", "7", "--centres", "shared", "--feature-mapping",
        "aligned", "--wca-crops", "9", "--wca-alpha", "0.3", "--waffle-count", "4"])
    got = {type(s).__name__: s for s in settings_from_args(args)}
    assert got["ABSConfig"] == ABSConfig(3, 4, 5, 0.1, 0.2, (0.5, 0.8), (0.4, 0.7), -2, 7, "shared", "aligned")
    assert got["WCAConfig"] == WCAConfig(crops=9, min_ratio=0.3, max_descriptions=7)
    assert got["WaffleSettings"].count == 4
    defaults = {type(s).__name__: s for s in settings_from_args(build_parser().parse_args(
        ["classify", "x.jpg", "--classes", "a,b"]))}
    assert defaults["ABSConfig"] == ABSConfig() and defaults["WCAConfig"] == WCAConfig()


def test_cli_settings_errors_name_the_flag(capsys):
    from absclip.cli.main import main

    assert main(["classify", str(PHOTO), "--classes", "a,b", "--top-k", "0", *MODEL]) == 2
    assert "--top-k must be at least 1" in capsys.readouterr().err


def test_methods_listing_is_plain_text(capsys):
    from absclip.cli.main import main

    assert main(["methods"]) == 0
    out = capsys.readouterr().out
    for name in list_methods():
        assert f"\n{name} " in "\n" + out
    assert ":func:" not in out and "``" not in out and "spec §" not in out
    assert "pixel_crops = 50  (--crops)" in out and "count = 15  (--waffle-count)" in out


def test_classifier_spec_pickles_and_builds(backbone):
    from absclip.api import ClassifierSpec

    spec = ClassifierSpec(str(CLIP_CFG), str(CLIP_WEIGHTS), attention_model=str(DINO),
                          settings=[ABSConfig(pixel_crops=4, feature_crops=4), WCAConfig(crops=3)], seed=3,
                          batch_size=2, use_cache=False)
    again = pickle.loads(pickle.dumps(spec))
    assert again == spec and isinstance(again.settings, tuple)
    assert again.setting(ABSConfig) == ABSConfig(pixel_crops=4, feature_crops=4)
    clf = again.build()
    assert clf.settings == {ABSConfig: spec.settings[0], WCAConfig: spec.settings[1]}
    assert (clf.seed, clf.batch_size, clf.encoder.use_cache) == (3, 2, False)
    clf.set_classes(["cat", "coffee", "rocket"])
    assert clf.method("abs").settings.pixel_crops == 4
    assert clf.backbone.identity == backbone.identity
    ref = spec.build().set_classes(["cat", "coffee", "rocket"])
    assert torch.equal(clf.logits(str(PHOTO), "abs"), ref.logits(str(PHOTO), "abs"))


def test_cli_builds_a_spec():
    from absclip.api import ClassifierSpec
    from absclip.cli.main import build_parser
    from absclip.cli.options import classifier_spec

    args = build_parser().parse_args(["eval", "--data", "d", "--classes", "a,b", "--crops", "3", "--seed", "5",
                                      "--ignore-sinks", "--cache-dir", "/tmp/c", *MODEL])
    spec = classifier_spec(args)
    assert isinstance(spec, ClassifierSpec) and spec.seed == 5 and spec.setting(ABSConfig).pixel_crops == 3
    assert spec.sink_threshold is not None and spec.cache_dir == "/tmp/c" and not spec.use_cache
    assert pickle.loads(pickle.dumps(spec)) == spec


def test_abs_draw_matches_views(backbone, dino, golden_items):
    """The draws a scale-out stage computes (``ABSMethod.draw``) are those ``views`` draws itself."""
    from absclip import Classifier

    assert get_method_class("abs").has_draws() and not get_method_class("clip").has_draws()
    cfg = ABSConfig(pixel_crops=4, feature_crops=4)
    clf = Classifier(backbone, attention_model=dino, settings=[cfg], use_cache=False).set_classes(["a", "b"])
    meth = clf.method("abs")
    items = golden_items[:2]
    own = meth.views(clf.context(items, ["abs"]), clf.seed)
    att = dino([it.image for it in items])
    drawn = [meth.draw(att[b], it.size, it.key, clf.seed, dino.grid, backbone.facts) for b, it in enumerate(items)]
    for v, d in zip(own, drawn):
        for f in dataclasses.fields(d):
            assert (getattr(v.draws, f.name) == getattr(d, f.name)).all()
    given = meth.views(clf.context(items, ["abs"], draws={"abs": drawn}), clf.seed)
    assert all(torch.equal(a.embeddings, b.embeddings) for a, b in zip(own, given))

"""Shared fixtures: the golden tiny models and the real photos in ../shared (never downloaded)."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("ABSCLIP_SHARED", ROOT.parent / "shared"))
GOLDEN = SHARED / "golden"
DATA = SHARED / "data"
CLIP_CFG = GOLDEN / "clip-tiny.open_clip.json"
CLIP_WEIGHTS = GOLDEN / "clip-tiny.pt"
DINO = GOLDEN / "dino-tiny"
GOLDEN_IMAGES = [GOLDEN / "images" / f for f in ("chelsea.png", "coffee.png", "rocket.jpg")]

# No test may reach a model hub; fail fast instead of retrying.
os.environ.setdefault("HF_HUB_OFFLINE", "1")

if not GOLDEN.is_dir() or not DATA.is_dir():  # a missing fixture is an error, never a silent skip
    raise RuntimeError(f"../shared (golden fixture and data) not found at {SHARED}")


@pytest.fixture(autouse=True)
def _isolated_cache(tmp_path_factory, monkeypatch):
    monkeypatch.setenv("ABSCLIP_CACHE_DIR", str(tmp_path_factory.getbasetemp() / "absclip-cache"))


@pytest.fixture(scope="session")
def golden():
    return dict(np.load(GOLDEN / "golden.npz"))


@pytest.fixture(scope="session")
def backbone():
    from absclip import load_clip

    return load_clip(str(CLIP_CFG), str(CLIP_WEIGHTS))


@pytest.fixture(scope="session")
def dino(backbone):
    from absclip import load_attention

    return load_attention(str(DINO), backbone)


@pytest.fixture(scope="session")
def golden_items():
    from absclip.io.images import make_item

    return [make_item(p) for p in GOLDEN_IMAGES]


#: fixtures that start a real Ray instance: every test using one is in the slow tier
SLOW_FIXTURES = {"ray_instance", "killed_run", "absclip_server"}
#: other tests of the slow tier (end-to-end runs of many images or processes, a real browser)
SLOW_TESTS = {
    "test_eval_imagenet_sample_1000_classes",
    "test_kill_and_resume_gives_identical_results",
    "test_changed_settings_are_refused",
    "test_report_renders_in_headless_chromium",
    "test_sigterm_on_the_ray_driver_is_an_interrupt",
    "test_classify_abs_with_feature_crops_does_not_depend_on_batch_size",
    "test_conv_tower_runs_pixel_crops_and_refuses_token_parts_in_one_sentence",
    "test_bench_runs_on_timm_families",
    "test_classify_and_eval_end_to_end_batch_size_free",
    "test_bench_naive_pipeline_agrees_and_counts_flops",
    "test_batch_size_and_listing_order_do_not_change_results",
    "test_bench_each_method_on_the_same_images",
    "test_every_source_gives_the_same_results",
    "test_label_reads_shards",
    "test_kill_and_resume_on_shards",
    "test_a_short_training_run_lowers_the_loss",
    "test_abs_beats_clip_on_small_objects",
    "test_abs_keeps_clip_accuracy_on_large_objects",
    "test_readme_see_it_work_lines_run_as_written",
}


def pytest_collection_modifyitems(config, items):
    """Mark the slow tier (``pytest -m "not slow"`` skips it; the full suite and CI run everything)."""
    for item in items:
        name = item.name.split("[", 1)[0]
        if name in SLOW_TESTS or SLOW_FIXTURES & set(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.slow)

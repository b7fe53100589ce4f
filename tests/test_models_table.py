"""Every row of the README's models table works as written, in every precision (tiny models, no downloads).

The local rows all hold the golden tiny CLIP's weights, so in fp32 they must give the same scores;
bf16 and fp16 stay close to them. The hub rows can't download here: each fails with one sentence.
"""

from __future__ import annotations

import json
import shutil

import pytest
import torch

from absclip.cli.main import main

from .conftest import CLIP_CFG, CLIP_WEIGHTS, DATA, DINO

PHOTO = str(DATA / "photos" / "chelsea.png")
CLASSES = "cat,coffee,rocket,flower"
SMALL = ["--crops", "4", "--feature-crops", "4", "--attention-model", str(DINO)]
PRECISIONS = ("fp32", "bf16", "fp16")


@pytest.fixture(scope="module")
def rows(tmp_path_factory):
    """``{row: model arguments}`` for the local rows of the README's table."""
    import open_clip

    from .test_hf_clip import write_hf_clip

    d = tmp_path_factory.mktemp("models")
    openai_file = d / "ViT-tiny.pt"  # an OpenAI-format state dict, given as the model
    shutil.copy(CLIP_WEIGHTS, openai_file)
    local = d / "local"  # an open_clip hub repo's layout, copied to a local folder
    local.mkdir()
    (local / "open_clip_config.json").write_text(json.dumps({
        "model_cfg": json.loads(CLIP_CFG.read_text()),
        "preprocess_cfg": {"mean": list(open_clip.OPENAI_DATASET_MEAN), "std": list(open_clip.OPENAI_DATASET_STD)},
    }))
    shutil.copy(CLIP_WEIGHTS, local / "open_clip_pytorch_model.bin")
    open_clip.add_model_config(CLIP_CFG)  # a registered name, as an open_clip name would be
    hf = d / "hf-clip"
    write_hf_clip(hf)
    return {
        "name + local checkpoint": ["--model", CLIP_CFG.name.removesuffix(".json"), "--pretrained", str(CLIP_WEIGHTS)],
        "OpenAI .pt file": ["--model", str(openai_file)],
        "local copy of a hub repo": ["--model", f"local-dir:{local}"],
        "JSON config and weights": ["--model", str(CLIP_CFG), "--pretrained", str(CLIP_WEIGHTS)],
        "transformers CLIPModel dir": ["--model", str(hf)],
        "transformers CLIPModel hf:": ["--model", f"hf:{hf}"],
    }


def classify(capsys, model_args, precision):
    code = main(["classify", PHOTO, "--classes", CLASSES, "--json", "--top", "4", "--precision", precision,
                 "--device", "cpu", *SMALL, *model_args])
    out, err = capsys.readouterr()
    assert code == 0, err
    preds = json.loads(out)[0]["predictions"]
    return {p["label"]: p["score"] for p in preds}


@pytest.fixture(scope="module")
def reference(rows):
    return {}


@pytest.mark.parametrize("precision", PRECISIONS)
@pytest.mark.parametrize("row", ["name + local checkpoint", "OpenAI .pt file", "local copy of a hub repo",
                                 "JSON config and weights", "transformers CLIPModel dir",
                                 "transformers CLIPModel hf:"])
def test_local_rows_work_in_every_precision(rows, reference, capsys, row, precision):
    scores = classify(capsys, rows[row], precision)
    assert set(scores) == set(CLASSES.split(",")) and all(0 <= s <= 1 for s in scores.values())
    assert abs(sum(scores.values()) - 1) < 1e-3
    # every local row holds the same weights; the transformers rows preprocess with the HF image
    # processor and tokenizer (a few grey levels apart), so they agree among themselves exactly
    family = "transformers" if row.startswith("transformers") else "open_clip"
    if precision == "fp32":
        ref = reference.setdefault(family, scores)
        assert max(abs(scores[k] - ref[k]) for k in ref) < 1e-4, (row, scores, ref)
        other = reference.get("open_clip" if family == "transformers" else "transformers")
        if other is not None:
            assert max(abs(scores[k] - other[k]) for k in other) < 0.02, (row, scores, other)
    else:
        ref = reference.get(family) or classify(capsys, rows[row], "fp32")
        assert max(abs(scores[k] - ref[k]) for k in ref) < 0.05, (row, precision, scores, ref)


@pytest.mark.parametrize("model_args,needle", [
    (["--model", "ViT-B-16", "--pretrained", "openai"], "--pretrained /path/to/file"),
    (["--model", "hf-hub:timm/vit_base_patch16_clip_224.openai"], "--model local-dir:/path/to/dir"),
    (["--model", "hf:openai/clip-vit-base-patch16"], "--model hf:/path/to/dir"),
])
def test_hub_rows_fail_offline_in_one_sentence(capsys, model_args, needle):
    code = main(["classify", PHOTO, "--classes", CLASSES, *SMALL, *model_args])
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1 and needle in err, err


def test_a_checkpoint_file_as_model_takes_no_other_tag(capsys):
    code = main(["classify", PHOTO, "--classes", CLASSES, *SMALL, "--model", str(CLIP_WEIGHTS),
                 "--pretrained", "laion2b_s34b_b88k"])
    err = capsys.readouterr().err
    assert code == 2 and "carries its own weights" in err and "--pretrained" in err


def test_openai_file_runs_in_bf16_without_mixed_dtypes():
    """The OpenAI loader used to keep fp32 LayerNorms, which a bf16 CPU forward rejects."""
    from absclip.backbones.registry import load_clip

    bb = load_clip(str(CLIP_WEIGHTS), None, device="cpu", precision="bf16")
    assert {p.dtype for p in bb.model.parameters()} == {torch.bfloat16}
    px = torch.zeros(1, 3, *bb.facts.image_size)
    assert torch.isfinite(bb.encode_images(px)).all()

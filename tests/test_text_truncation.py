"""Text banks are encoded only up to each batch's longest end-of-text position, where that is exact.

A causal CLIP text tower that pools the end-of-text token never reads the padding after it, so
length-sorted batches cut at their longest text give the full-length embeddings. A tower without a
causal mask reads every position and keeps the full context.
"""

from __future__ import annotations

import copy
import json

import torch
import torch.nn.functional as F

from absclip.cli.main import main
from absclip.diagnostics.bench import bench_quick_gelu

from .conftest import CLIP_CFG, CLIP_WEIGHTS, DATA

SUSX = DATA / "descriptions" / "susx_cupl" / "gpt3_prompts" / "CuPL_prompts_imagenet.json"


def sentences(n: int = 120) -> list[str]:
    bank = json.loads(SUSX.read_text())
    out = [s for cls in list(bank)[:10] for s in bank[cls][:12]][: n - 2]
    return [*out, "a cat.", "a very long description " * 30]  # one longer than the context


def full_length(bb, texts):
    with torch.inference_mode():
        return F.normalize(bb.model.encode_text(bb.tokenizer(texts)).float(), dim=-1)


def test_truncated_batches_equal_the_full_context(backbone):
    texts = sentences()
    ref = full_length(backbone, texts)
    for batch in (1, 7, 256):
        got = backbone.encode_texts(texts, batch_size=batch)
        assert (got - ref).abs().max() < 1e-5, batch
    tokens = backbone.tokenizer(texts)
    ends = backbone.text_ends(tokens)
    assert ends is not None and int(ends.max()) == tokens.shape[1] - 1  # the long text fills the context
    assert int(torch.median(ends.float())) < tokens.shape[1] // 2  # most batches are much shorter


def test_batches_are_length_sorted_and_cut(backbone, monkeypatch):
    texts = sentences()
    lengths = []
    real = type(backbone)._encode_text_prefix

    def spy(self, tokens):
        lengths.append(tokens.shape[1])
        return real(self, tokens)

    monkeypatch.setattr(type(backbone), "_encode_text_prefix", spy)
    backbone.encode_texts(texts, batch_size=16)
    assert lengths == sorted(lengths) and lengths[0] < lengths[-1] == backbone.tokenizer(["x"]).shape[1]


def test_a_tower_without_causal_mask_keeps_the_full_context(backbone, monkeypatch):
    bb = copy.copy(backbone)
    bb.model = copy.deepcopy(backbone.model)
    bb.model.attn_mask = None  # as SigLIP-style text towers: every position is read
    texts = sentences(20)
    assert bb.text_ends(bb.tokenizer(texts)) is None

    def refuse(self, tokens):
        raise AssertionError("a non-causal tower must not be truncated")

    monkeypatch.setattr(type(bb), "_encode_text_prefix", refuse)
    assert (bb.encode_texts(texts, batch_size=8) - full_length(bb, texts)).abs().max() < 1e-6


def test_bench_text_reports_both_paths(capsys):
    """``absclip bench --text``: naive full length against absclip's path, same sentences, one run."""
    code = main(["bench", "--text", "--model", str(CLIP_CFG), "--pretrained", str(CLIP_WEIGHTS),
                 "--descriptions-dir", str(DATA / "descriptions"), "--text-classes", "6", "--json"])
    assert code == 0
    out = capsys.readouterr().out.strip().splitlines()
    rep = json.loads(out[-1])
    text = "\n".join(out[:-1])
    bank = json.loads(SUSX.read_text())
    assert rep["mode"] == "text" and rep["descriptions"] == "susx:imagenet" and rep["classes"] == 6
    assert rep["sentences"] == sum(len(bank[c]) for c in list(bank)[:6])
    assert rep["truncated"] and rep["median_end_of_text"] < rep["context_length"] == 77
    assert rep["max_abs_diff"] <= 1e-5
    assert rep["naive_sentences_per_s"] > 0 and rep["sentences_per_s"] > 0 and rep["speedup_vs_naive"] > 0
    assert rep["activation"] == "quick_gelu" and rep["settings"]["absclip_batch_size"] == 32
    for needle in ("naive", "absclip", "sentences/s", "max abs difference", "activation quick_gelu"):
        assert needle in text, needle


def test_bench_needs_images_or_text(capsys):
    assert main(["bench"]) != 0
    assert "--images" in capsys.readouterr().err


def test_random_weights_are_benchmarked_with_the_default_weights_activation():
    qg, notes = bench_quick_gelu("ViT-B-16", None, None)
    assert qg is True and "QuickGELU" in notes[0]  # what ViT-B-16 + openai (the default) runs
    assert bench_quick_gelu("ViT-B-16", None, False) == (False, [])  # asked for GELU
    assert bench_quick_gelu("ViT-B-16", "laion2b_s34b_b88k", None) == (None, [])  # the loader follows the tag
    assert bench_quick_gelu("ViT-B-16-SigLIP", None, None) == (None, [])  # no OpenAI weights

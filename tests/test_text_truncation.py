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

from .conftest import DATA

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

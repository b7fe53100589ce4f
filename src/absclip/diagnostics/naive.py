"""A naive, reference-style ABS pipeline: the baseline ``absclip bench`` measures against.

It mirrors the published reference (BIT-DA/ABS ``main.py`` / ``helper.py`` / ``clip/model.py``),
fp32, one image at a time:

* the attention model runs twice per image (the reference runs DINO in its loader worker and
  again in the main process, with identical results);
* every pixel crop is ``PIL.Image.crop`` + the CLIP preprocessing, one crop at a time;
* one image-encoder call for the view group "full image + pixel crops", through open_clip's
  own modules (``nn.MultiheadAttention``, convolutional patch embedding, all tokens in every
  block), then the full image again up to the feature-crop block;
* feature crops: a Python loop over views (crop window, bicubic resize, prepend CLS), then one
  call for the group through the remaining block(s);
* scoring: the reference's formula (``log_softmax().exp() * s`` summed) per image over all its
  views at once (the reference batches this over images too, so it is not made slower here).

Its crop geometry is absclip's own (:func:`absclip.core.geometry.abs_geometry`), so with the same
draws both pipelines see the same crops and their logits can be compared to 1e-4."""

from __future__ import annotations

from collections.abc import Sequence

import torch

from absclip.attention.sources import AttentionSource
from absclip.backbones.base import Backbone
from absclip.core.geometry import abs_geometry, feature_crop_tokens
from absclip.core.sampling import ABSDraws, image_rng
from absclip.core.settings import ABSConfig
from absclip.core.timer import StageTimer
from absclip.io.images import ImageItem
from absclip.text.encoder import EncodedBank


def naive_abs_logits(
    items: Sequence[ImageItem],
    backbone: Backbone,
    attention: AttentionSource,
    cfg: ABSConfig,
    seed: int,
    bank: EncodedBank,
    timer: StageTimer,
    draws: dict[str, tuple[ABSDraws, torch.Tensor]] | None = None,
) -> tuple[torch.Tensor, int]:
    """Return reference-style ABS logits ``[N, C]`` and the number of top-k mismatches (see the module docstring).

    Args:
        items: decoded images.
        backbone: the CLIP model (fp32); it runs unfused here (:meth:`Backbone.unfused`).
        attention: the attention source, run twice per image as the reference does.
        cfg: faithful ABS settings.
        seed: run seed (each image draws from ``image_rng(seed, key, "abs")`` unless injected).
        bank: description embeddings ``[C, M, D]`` and mask.
        timer: stage timer.
        draws: optional ``{image key: (draws, topk_idx)}`` from the optimised run; injected so
            both pipelines use identical crops. A differing top-k list is counted as a mismatch.
    """
    bb = backbone.unfused()  # the model's own modules (open_clip's nn.MultiheadAttention etc.), same weights
    dim = bb.facts.embed_dim
    c, m, _ = bank.emb.shape
    flat = bank.emb.reshape(c * m, dim).to(bb.device)
    valid = bank.mask.reshape(c * m).to(bb.device)
    grid = bb.facts.grid
    out, mismatches = [], 0
    saved = getattr(attention, "fast", None)
    if saved is not None:
        attention.fast = False  # the whole attention model with eager attention maps, as the reference
    try:
        with torch.inference_mode():
            for item in items:
                w, h = item.size
                with timer("attention"):
                    att = attention([item.image])[0]  # in the reference's loader worker
                with timer("crop geometry + resize"):
                    injected, ref_idx = (draws or {}).get(item.key, (None, None))
                    geo = abs_geometry(att, injected, cfg, w, h, attention.grid, grid, bb.facts.image_size[0],
                                       image_rng(seed, item.key, "abs"), squash=bb.facts.resize_mode == "squash")
                    idx, boxes, windows = geo.topk_idx, geo.boxes, geo.windows
                    if ref_idx is not None and not torch.equal(idx, ref_idx):
                        mismatches += 1
                    pixels = [bb.preprocess(item.image)]
                    for box in boxes:  # one PIL crop + preprocess at a time
                        pixels.append(bb.preprocess(item.image.crop(box)))
                with timer("attention"):
                    attention([item.image])  # the reference runs DINO again in the main process
                with timer("image encoding"):
                    px = torch.stack(pixels)
                    emb = bb.encode_images(px)  # full image + pixel crops: one call for the view group
                    tokens = bb.tokens_before(px[:1], cfg.feature_layer)[0] if cfg.feature_crops else None
                with timer("feature crops"):
                    if tokens is not None:
                        seqs = [feature_crop_tokens(tokens, [win], grid)[0] for win in windows]  # per-view loop
                        feat = bb.forward_from(torch.stack(seqs), cfg.feature_layer)
                    else:
                        feat = emb[:0]
                with timer("scoring"):
                    views = torch.cat([feat, emb[1:]]).to(flat.device)  # [V, D]
                    s = (views @ flat.T) / cfg.score_temperature  # [V, C*M]
                    s = s.masked_fill(~valid, float("-inf"))
                    p = s.log_softmax(dim=-1).exp()
                    ps = torch.where(valid, p * s, torch.zeros((), dtype=s.dtype, device=s.device))
                    out.append(ps.view(-1, c, m).sum(-1).sum(0).float().cpu())
    finally:
        if saved is not None:
            attention.fast = saved
    return torch.stack(out), mismatches

"""ABS: attention-guided pixel and feature crops, soft-matched against class descriptions."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from absclip.core import views
from absclip.core.settings import ABSConfig, fast_abs_config
from absclip.core.timer import NULL_TIMER
from absclip.methods.base import Method, TextInputs, register_method

if TYPE_CHECKING:  # torch, numpy and the model side are imported inside functions (a fast CLI parser)
    import torch

    from absclip.core.sampling import ABSDraws
    from absclip.methods.batch import BatchContext
    from absclip.text.encoder import TextEncoder

log = logging.getLogger(__name__)


@register_method("abs")
class ABSMethod(Method):
    """ABS: attention-guided pixel and feature crops, soft-matched against descriptions (spec §1–§6)."""

    needs_attention = True
    needs_tokens = True

    settings_type = ABSConfig
    settings: ABSConfig

    def prepare(self, inputs: TextInputs, encoder: TextEncoder) -> None:
        self.bank = encoder.encode_bank(inputs.description_texts(), self.settings.max_descriptions)

    def views(self, ctx: BatchContext, seed: int) -> list[ABSViews]:
        """Return every image's views (attention, draws, boxes, windows, embeddings) for the batch.

        Draws given by an earlier stage (``ctx.draws[method name]``) are used where present; other
        images draw from their own generator (the same values).
        """
        return abs_views(ctx, self.settings, seed, ctx.draws.get(self.name))

    def draw(self, attention: torch.Tensor, size: tuple[int, int], key: str, seed: int,
             attn_grid: tuple[int, int], facts: Any) -> ABSDraws:
        """Return one image's crop draws from its attention map, exactly as :meth:`views` draws them."""
        from absclip.core.geometry import abs_geometry
        from absclip.core.sampling import image_rng

        w, h = size
        return abs_geometry(attention, None, self.settings, w, h, tuple(attn_grid), tuple(facts.grid),
                            int(facts.image_size[0]), image_rng(seed, key, "abs")).draws

    def score(self, views: Sequence[ABSViews], timer: Any = None) -> torch.Tensor:
        """Return logits ``[B, C]`` of the views of a batch (soft matching, spec §5–§6)."""
        import torch

        from absclip.core import scoring

        with (timer or NULL_TIMER)("scoring"):
            emb = torch.stack([v.embeddings for v in views])  # [B, V, D]
            return scoring.soft_match_logits(emb, self.bank.emb, self.bank.mask, self.settings.score_temperature)

    def logits(self, ctx: BatchContext, seed: int) -> torch.Tensor:
        """Return logits ``[B, C]`` for the batch."""
        return self.score(self.views(ctx, seed), ctx.timer)

    def probabilities(self, logits: torch.Tensor, logit_scale: float, logit_bias: float | None = None) -> torch.Tensor:
        # ABS logits are sums over V views of soft-matching scores in units of 1/tau (not cosines): average
        # per view first; the model's scale and bias (SigLIP) do not apply to them
        import torch

        views = max(1, self.settings.pixel_crops + self.settings.feature_crops)
        return torch.softmax(logits / views, dim=-1)


@register_method("abs-fast")
class ABSFastMethod(ABSMethod):
    """ABS fast mode (changes results): at most 16 pixel crops, each keeping half its tokens by attention."""

    def __init__(self, settings: ABSConfig | None = None) -> None:
        super().__init__(fast_abs_config(settings or ABSConfig()))


@dataclass
class ABSViews:
    """Everything ABS computed for one image (kept for explanations and tests).

    Attributes:
        attention: ``[A]`` head-averaged attention on the attention grid (row-major).
        topk_idx: ``[k]`` attention-grid indices, descending attention; topk_prob ``[k]``.
        draws: the random draws used.
        boxes: pixel-crop boxes (half-open, original pixels).
        windows: feature windows (half-open, CLIP token grid).
        feat_centres: CLIP-grid indices of the feature-crop centres.
        embeddings: ``[V, D]`` normalised view embeddings, feature crops first, then pixel crops.
        full: ``[D]`` normalised full-image embedding.
    """

    attention: torch.Tensor
    topk_idx: torch.Tensor
    topk_prob: torch.Tensor
    draws: ABSDraws
    boxes: list[views.Box]
    windows: list[views.Window]
    feat_centres: list[int]
    embeddings: torch.Tensor
    full: torch.Tensor


def encode_feature_crops(ctx: BatchContext, windows: Sequence[Sequence[views.Window]]) -> list[torch.Tensor]:
    """Return each image's feature-crop embeddings ``[n_b, D]`` (normalised, fp32, CPU).

    Identical windows of one image give identical views, so each distinct ``(image, window)`` is
    computed once (the sampler draws 50 centres with replacement from 20 cells and 3 odd sizes,
    so many repeat) and shared; the results are the same as computing every view. All images'
    crops run the remaining block(s) together in chunks of ``ctx.view_batch``.

    Args:
        ctx: the batch (its ``tokens`` are used).
        windows: per image, the half-open token windows in view order.
    """
    import torch

    from absclip.core.geometry import batched_feature_crop_tokens

    bb = ctx.backbone
    index: dict[tuple[int, views.Window], int] = {}
    for b, ws in enumerate(windows):
        for w in ws:
            index.setdefault((b, tuple(w)), len(index))
    unique = list(index)
    dim = bb.facts.embed_dim
    if not unique:
        return [torch.zeros(0, dim) for _ in windows]
    tokens = ctx.tokens
    out = []
    for i in range(0, len(unique), ctx.view_batch):
        seqs = batched_feature_crop_tokens(tokens, unique[i : i + ctx.view_batch], bb.facts.grid)
        out.append(bb.forward_from(seqs, ctx.feature_layer).cpu())
    ctx.feature_crops_encoded += len(unique)
    emb = torch.cat(out)
    return [emb[torch.tensor([index[(b, tuple(w))] for w in ws], dtype=torch.long)] if ws else emb[:0]
            for b, ws in enumerate(windows)]


def abs_views(
    ctx: BatchContext,
    cfg: ABSConfig,
    seed: int,
    draws: Sequence[ABSDraws | None] | None = None,
) -> list[ABSViews]:
    """Return the ABS views of every image of the batch (spec §1–§4).

    One attention pass per image; pixel crops of all images are encoded together in chunks of
    ``ctx.view_batch``; the distinct feature crops of all images run the remaining block(s)
    together (:func:`encode_feature_crops`); the full-image embedding reuses the feature-crop
    tokens. Stages are timed with ``ctx.timer``.

    Args:
        ctx: the batch.
        cfg: ABS settings.
        seed: the run seed; each image draws from ``image_rng(seed, image.key, "abs")``.
        draws: optional injected draws per image (None entries are drawn).
    """
    import torch

    from absclip.core.geometry import abs_geometry, token_keep_indices
    from absclip.core.sampling import image_rng

    bb = ctx.backbone
    src = ctx.attention_source
    if src is None:
        raise RuntimeError("ABS needs an attention source")
    timer = ctx.timer
    with timer("attention"):
        att = ctx.attention
    with timer("crop geometry + resize"):
        geo = []
        for b, item in enumerate(ctx.items):
            w, h = item.size
            rng = image_rng(seed, item.key, "abs")
            injected = draws[b] if draws is not None else None
            geo.append(abs_geometry(att[b], injected, cfg, w, h, src.grid, bb.facts.grid, bb.facts.image_size[0],
                                    rng, squash=bb.facts.resize_mode == "squash"))
        # pixel crops: crop the original image, then the model's own preprocessing (resize, centre crop)
        jobs = [(item, box) for item, g in zip(ctx.items, geo) for box in g.boxes]
        keep = None
        if cfg.token_keep < 1 and jobs:
            keep = torch.stack([token_keep_indices(att[b], box, item.size, src.grid, bb.facts.grid, cfg.token_keep)
                                for b, (item, g) in enumerate(zip(ctx.items, geo)) for box in g.boxes])
    pix_emb = ctx.encode_crop_jobs(jobs, keep)  # crops made and encoded one view batch at a time
    with timer("image encoding"):
        if cfg.feature_crops > 0:
            ctx.tokens  # noqa: B018 - the tokens entering the crop block (shared with the full image)
    feat_emb: list[torch.Tensor] = []
    if cfg.feature_crops > 0:
        with timer("feature crops"):
            feat_emb = encode_feature_crops(ctx, [g.windows for g in geo])
    with timer("image encoding"):
        full = ctx.full.cpu()
    out, offset = [], 0
    for b, g in enumerate(geo):
        parts = []
        if cfg.feature_crops > 0:
            parts.append(feat_emb[b])
        parts.append(pix_emb[offset : offset + len(g.boxes)])
        offset += len(g.boxes)
        out.append(ABSViews(att[b], g.topk_idx, g.topk_prob, g.draws, g.boxes, g.windows, g.feat_centres,
                            torch.cat(parts), full[b]))
    return out

"""Scores: pure functions of embeddings. No model, no I/O, no randomness.

Shapes: views ``[B, V, D]``, description embeddings ``[C, M, D]`` with a boolean mask
``[C, M]`` (classes may have different description counts), class embeddings ``[C, D]``.
All embeddings are expected L2-normalised."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def masked_mean_classifier(text: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Return the class embeddings ``[C, D]``: the mean of each class's valid rows, renormalised.

    This is the CuPL / DCLIP / template-ensemble head (open_clip's ``build_zero_shot_classifier``).
    """
    w = mask.to(text.dtype).unsqueeze(-1)  # [C, M, 1]
    mean = (text * w).sum(1) / w.sum(1).clamp_min(1)
    return F.normalize(mean, dim=-1)


def cosine_logits(image: torch.Tensor, classifier: torch.Tensor) -> torch.Tensor:
    """Return ``image @ classifier.T``: ``[B, C]`` cosine similarities for ``[B, D]`` and ``[C, D]``."""
    return image @ classifier.T


def soft_match_view_scores(
    views: torch.Tensor,
    text: torch.Tensor,
    mask: torch.Tensor,
    temperature: float,
    chunk: int = 64,
) -> torch.Tensor:
    """Return ABS per-view class scores ``g`` ``[B, V, C]`` (spec §6).

    ``s[v,c,m] = <f_v, t_{c,m}> / tau``; one softmax per view over all valid (class, description)
    pairs; ``g[v,c] = sum_m p[v,c,m] * s[v,c,m]``. Views are processed in chunks so that
    1000 classes x 50 descriptions x 100 views stays within memory.

    Args:
        views: ``[B, V, D]`` normalised view embeddings.
        text: ``[C, M, D]`` normalised description embeddings (padding rows arbitrary).
        mask: ``[C, M]`` True where a description exists.
        temperature: tau.
        chunk: number of views scored at once.
    """
    b, v, d = views.shape
    c, m, _ = text.shape
    flat_text, invalid = _flat_bank(text, mask, views)
    out = views.new_empty(b, v, c)
    flat_views = views.reshape(b * v, d)
    rows = out.view(b * v, c)
    for i in range(0, b * v, chunk):
        s, p = _soft_match_chunk(flat_views[i : i + chunk], flat_text, invalid, temperature)
        if invalid is not None:
            s.masked_fill_(invalid, 0.0)  # p is 0 there; 0 * -inf would be nan
        rows[i : i + chunk] = p.mul_(s).view(-1, c, m).sum(-1)
        del s, p
    return out


def _flat_bank(text: torch.Tensor, mask: torch.Tensor, views: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Return the bank as ``[C*M, D]`` in the views' dtype and its invalid-row mask (None when all are valid)."""
    c, m, d = text.shape
    valid = mask.reshape(c * m).to(views.device)
    return text.reshape(c * m, d).to(views.dtype), (None if bool(valid.all()) else ~valid)


def _soft_match_chunk(
    views: torch.Tensor, flat_text: torch.Tensor, invalid: torch.Tensor | None, temperature: float,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Return ``s = <f_v, t> / tau`` (``-inf`` on padding) and its softmax ``p``, both ``[n, C*M]``.

    Computed in place: two ``[n, C*M]`` buffers (1000 x 50 descriptions: 12.8 MB each for 64 views).
    """
    s = torch.mm(views, flat_text.T).div_(temperature)
    if invalid is not None:
        s.masked_fill_(invalid, float("-inf"))
    return s, torch.softmax(s, dim=-1)


def soft_match_description_mass(
    views: torch.Tensor,
    text: torch.Tensor,
    mask: torch.Tensor,
    temperature: float,
    chunk: int = 64,
) -> torch.Tensor:
    """Return the soft-matching mass of every description ``[B, C, M]``: ``sum_v p[v,c,m]``.

    ``p`` is the per-view softmax over all valid (class, description) pairs of
    :func:`soft_match_view_scores`, so each image's masses sum to its number of views ``V``;
    padding descriptions get 0. ``mass[b, c] / mass[b, c].sum()`` is each description's share
    of class ``c``'s evidence (the explanation picture shows it).

    Args:
        views: ``[B, V, D]`` normalised view embeddings.
        text: ``[C, M, D]`` normalised description embeddings; mask ``[C, M]``.
        temperature: tau.
        chunk: number of views processed at once.
    """
    b, v, _ = views.shape
    c, m, _ = text.shape
    flat_text, invalid = _flat_bank(text, mask, views)
    out = views.new_zeros(b, c * m)
    for i in range(b):
        for j in range(0, v, chunk):
            _, p = _soft_match_chunk(views[i, j : j + chunk], flat_text, invalid, temperature)
            out[i] += p.sum(0)  # padding rows have p = exp(-inf) = 0
    return out.view(b, c, m)


def soft_match_logits(views: torch.Tensor, text: torch.Tensor, mask: torch.Tensor, temperature: float) -> torch.Tensor:
    """Return ABS image logits ``[B, C]``: per-view soft-matching scores summed over views."""
    return soft_match_view_scores(views, text, mask, temperature).sum(1)


def wca_logits(
    views: torch.Tensor,
    full: torch.Tensor,
    text: torch.Tensor,
    mask: torch.Tensor,
    prompt: torch.Tensor,
    image_weight_scale: float,
    text_weight_scale: float,
) -> torch.Tensor:
    """Return WCA logits ``[B, C]``: similarity-weighted cosine between views and descriptions.

    View weights ``softmax_v(a * cos(view, full))`` over the views (the full image included by the
    caller); description weights ``softmax_m(b * cos(t_{c,m}, prompt_c))`` per class over valid
    descriptions; ``logit_c = sum_v sum_m w_v u_{c,m} cos(view_v, t_{c,m})``.

    Args:
        views: ``[B, V, D]`` view embeddings (full image and crops).
        full: ``[B, D]`` full-image embeddings.
        text: ``[C, M, D]`` description embeddings; mask ``[C, M]``.
        prompt: ``[C, D]`` embeddings of "a photo of a {c}.".
    """
    vw = torch.softmax(image_weight_scale * torch.einsum("bvd,bd->bv", views, full), dim=-1)  # [B, V]
    tw = text_weight_scale * torch.einsum("cmd,cd->cm", text, prompt)
    tw = torch.softmax(tw.masked_fill(~mask, float("-inf")), dim=-1)  # [C, M]
    tw = torch.where(mask, tw, torch.zeros((), dtype=tw.dtype))
    # aggregate text first: sum_m u_{c,m} t_{c,m} -> [C, D], then views: sum_v w_v f_v -> [B, D]
    weighted_text = torch.einsum("cm,cmd->cd", tw, text)
    weighted_view = torch.einsum("bv,bvd->bd", vw, views)
    return weighted_view @ weighted_text.T

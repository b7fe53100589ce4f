"""What every backbone adapter provides: device/precision resolution, the facts it carries, explicit attention."""

from __future__ import annotations

import logging
from dataclasses import dataclass

import torch

from absclip.errors import AbsclipError

log = logging.getLogger(__name__)

PRECISIONS = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


def resolve_device(device: str | torch.device | None) -> torch.device:
    """Return a torch device; ``None``/"auto" picks CUDA when available, else the CPU."""
    if device is None or str(device) == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(device)
    except RuntimeError as e:
        raise AbsclipError(f"Unknown device {device!r}; use cpu, cuda, cuda:N or auto.") from e
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise AbsclipError(f"Device {device!r} was requested but CUDA is not available on this machine.")
    return dev


def resolve_precision(precision: str | None, device: torch.device) -> torch.dtype:
    """Return the compute dtype: "auto" is fp16 on CUDA (as the reference) and fp32 on the CPU."""
    if precision in (None, "auto"):
        return torch.float16 if device.type == "cuda" else torch.float32
    if precision not in PRECISIONS:
        raise AbsclipError(f"Unknown precision {precision!r}; use one of fp32, bf16, fp16, auto.")
    return PRECISIONS[precision]


def attention_probs(q: torch.Tensor, k: torch.Tensor, heads: int) -> torch.Tensor:
    """Return ``softmax(q k^T / sqrt(d_head))`` per head: ``[B, heads, Tq, Tk]`` (fp32).

    Args:
        q: ``[B, Tq, width]`` projected queries (e.g. only the CLS row, ``Tq = 1``).
        k: ``[B, Tk, width]`` projected keys.
        heads: number of attention heads (``width`` must be divisible by it).
    """
    bsz, tq, width = q.shape
    dh = width // heads
    qh = q.float().reshape(bsz, tq, heads, dh).transpose(1, 2)  # [B, h, Tq, dh]
    kh = k.float().reshape(bsz, k.shape[1], heads, dh).transpose(1, 2)  # [B, h, Tk, dh]
    return torch.softmax(qh @ kh.transpose(-1, -2) / dh**0.5, dim=-1)


@dataclass(frozen=True)
class BackboneFacts:
    """Facts a backbone carries: read by views/scoring instead of literals.

    Attributes:
        image_size: (H, W) of the encoder input in pixels.
        patch_size: (h, w) of a patch in pixels.
        grid: (rows, cols) of the patch-token grid.
        num_blocks: number of transformer blocks of the image tower.
        width: token width of the image tower.
        embed_dim: joint embedding dimension.
    """

    image_size: tuple[int, int]
    patch_size: tuple[int, int]
    grid: tuple[int, int]
    num_blocks: int
    width: int
    embed_dim: int

"""The backbone protocol (:class:`Backbone`): everything the rest of absclip may ask of a CLIP model.

Adapters (:mod:`absclip.backbones.open_clip`, :mod:`absclip.backbones.hf`) implement it; no module
outside :mod:`absclip.backbones` touches a model's internals. Also here: device/precision
resolution, the facts an adapter carries, explicit attention and FLOP estimates."""

from __future__ import annotations

import copy
import logging
from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch

# defined in core.settings (torch-free, for the CLI); re-exported here
from absclip.core.settings import DEFAULT_DEVICE as DEFAULT_DEVICE
from absclip.core.settings import DEFAULT_PRECISION as DEFAULT_PRECISION
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


def probe_in_slot(attention: torch.Tensor, probe: torch.Tensor | None) -> torch.Tensor:
    """Return a block's patch attention ``[B, h, N, N]`` with a CLS slot in front: ``[B, h, 1 + N, 1 + N]``.

    For towers without a class token that pool with an attention probe: nothing attends to the
    slot; its row is the probe's attention over the patches ``[B, h or 1, N]`` where given (the
    last block of a rollout), else ``[1, 0, ...]`` (the slot keeps to itself), so that rollout's
    CLS row carries the probe back through the patch attention.
    """
    b, heads, n, _ = attention.shape
    out = attention.new_zeros(b, heads, 1 + n, 1 + n)
    out[:, :, 1:, 1:] = attention
    if probe is None:
        out[:, :, 0, 0] = 1.0
    else:
        out[:, :, 0, 1:] = probe.mean(1, keepdim=True) if probe.shape[1] != heads else probe
    return out


@dataclass(frozen=True)
class LoadRequest:
    """What :func:`absclip.backbones.registry.load_clip` was asked to load, device and dtype resolved.

    Attributes:
        model: the model spec as given (name, path, ``hf:``/``hf-hub:``/``local-dir:`` prefix).
        pretrained: tag or checkpoint file, or None (random weights).
        device, dtype: where and in which precision the model runs.
        quick_gelu: force QuickGELU; None follows the tag/config.
        weights_dir: download cache of the loading library (None: its own default).
    """

    model: str
    pretrained: str | None
    device: torch.device
    dtype: torch.dtype
    quick_gelu: bool | None = None
    weights_dir: str | None = None


@dataclass(frozen=True)
class LoaderRow:
    """One row of the loader table: ``loader`` loads every request ``accepts`` says yes to.

    Adapter modules in :mod:`absclip.backbones` declare their rows in a module-level ``LOADERS``
    tuple; :mod:`absclip.backbones.registry` collects them and tries them by ascending ``priority``.
    """

    name: str
    accepts: Callable[[LoadRequest], bool]
    loader: Callable[[LoadRequest], Backbone]
    priority: int = 100


@dataclass(frozen=True)
class TowerRow:
    """One row of the open_clip tower table: ``adapter`` wraps every open_clip model whose image tower ``accepts``.

    Modules declare their rows in a module-level ``TOWERS`` tuple; :mod:`absclip.backbones.registry`
    collects them and tries them by ascending ``priority`` (open_clip's own adapter, last, takes any tower).
    """

    name: str
    accepts: Callable[[Any], bool]
    adapter: Callable[..., Backbone]
    priority: int = 100


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
        heads: attention heads per block (0 when unknown).
        mlp_width: hidden width of a block's MLP (0: assume ``4 * width``).
        class_token: whether the tower has a class token. Towers without one (SigLIP's MAP pooling)
            still exchange tokens in the protocol's layout: a placeholder in the CLS slot, never read.
        resize_mode: how the model's preprocessing fits an image to ``image_size``: ``shortest``
            (resize the shorter side, centre crop; OpenAI CLIP) or ``squash`` (resize both sides; SigLIP).
    """

    image_size: tuple[int, int]
    patch_size: tuple[int, int]
    grid: tuple[int, int]
    num_blocks: int
    width: int
    embed_dim: int
    heads: int = 0
    mlp_width: int = 0
    class_token: bool = True
    resize_mode: str = "shortest"


def vit_flops(
    tokens: int,
    width: int,
    blocks: int,
    mlp_width: int,
    *,
    patch_dim: int = 0,
    patches: int = 0,
    cls_last: bool = False,
    out_dim: int = 0,
) -> float:
    """Return the multiply-add FLOPs (2 per MAC) of a ViT forward on ``tokens`` tokens.

    Counts the matrix products (patch embedding, q/k/v, attention scores and values, output
    projection, MLP, final projection); norms, activations and softmax are ignored (<2%).

    Args:
        tokens: tokens per sequence (CLS included).
        width: token width; mlp_width: hidden width of the MLP; blocks: blocks run.
        patch_dim / patches: ``3*p*p`` and the number of embedded patches (0 to skip the embedding).
        cls_last: the last block runs for the CLS query only (fused path).
        out_dim: projection output size (0 to skip).
    """
    t, w = tokens, width
    full = 2 * (t * w * 3 * w + 2 * t * t * w + t * w * w + 2 * t * w * mlp_width)
    cls = 2 * (t * w * 2 * w + w * w + 2 * t * w + w * w + 2 * w * mlp_width)
    n_full = blocks - 1 if cls_last and blocks > 0 else blocks
    flops = n_full * full + (cls if cls_last and blocks > 0 else 0)
    flops += 2 * patches * patch_dim * w + 2 * w * out_dim
    return float(flops)


def tower_flops(facts: BackboneFacts) -> dict[str, float]:
    """Return FLOP building blocks of a ViT image tower described by ``facts`` (see :func:`vit_flops`).

    Keys: ``full`` (one plain forward), ``full_cls`` (last block CLS-only), ``embed``, ``block``
    (one full block on all tokens), ``block_cls``, ``proj``; plus ``tokens``, ``width``, ``mlp``,
    ``blocks``, ``patch_dim``, ``patches``.
    """
    f = facts
    t = int(f.class_token) + f.grid[0] * f.grid[1]
    mlp = f.mlp_width or 4 * f.width
    pd = 3 * f.patch_size[0] * f.patch_size[1]
    npatch = f.grid[0] * f.grid[1]
    out = {
        "tokens": t, "width": f.width, "mlp": mlp, "blocks": f.num_blocks, "patch_dim": pd, "patches": npatch,
        "embed": vit_flops(t, f.width, 0, mlp, patch_dim=pd, patches=npatch),
        "block": vit_flops(t, f.width, 1, mlp),
        "block_cls": vit_flops(t, f.width, 1, mlp, cls_last=True),
        "proj": vit_flops(t, f.width, 0, mlp, out_dim=f.embed_dim),
    }
    out["full"] = out["embed"] + f.num_blocks * out["block"] + out["proj"]
    out["full_cls"] = out["full"] - out["block"] + out["block_cls"]
    return out


#: what to change when a tower without tokens is asked for a token-level part (``require_tokens``'s ``what``)
TOKEN_OPTIONS = {
    "feature crops": "set `feature_crops` to 0 for pixel crops only",
    "CLIP attention maps": "set `attention_model` to a DINO-like ViT such as facebook/dino-vitb16",
    "text similarity maps": "use another `map`",
}


class Backbone(ABC):
    """A CLIP-family model behind the one interface absclip uses (see the module docstring).

    Image-side methods take preprocessed pixels ``[B, 3, H, W]`` and return L2-normalised fp32
    embeddings ``[B, D]``. Token-level methods (feature crops, CLIP attention, text maps) need a
    ViT image tower with tokens (``has_tokens``); adapters without one raise :class:`AbsclipError`.

    Attributes:
        preprocess: PIL image -> ``[3, H, W]`` tensor.
        tokenizer: ``list[str]`` -> ``[N, context]`` token ids.
        facts: :class:`BackboneFacts` of the image tower.
        device, dtype: where and in which precision the model runs.
        name, pretrained, identity: what was loaded (``identity`` keys caches).
        has_tokens: whether the token-level methods are available.
        default_attention: the attention source used when none is asked for (None: a DINO ViT-B/16);
            ``clip`` for models that come without one (the shipped demo model).
    """

    preprocess: Any
    tokenizer: Any
    facts: BackboneFacts
    device: torch.device
    dtype: torch.dtype
    name: str
    pretrained: str | None
    identity: str
    has_tokens: bool = False
    default_attention: str | None = None

    # -- helpers -------------------------------------------------------------------------------
    def require_tokens(self, what: str) -> None:
        """Raise :class:`AbsclipError` saying that ``what`` (plural noun phrase) needs tokens, unless ``has_tokens``.

        The sentence names the option that avoids the need (:data:`TOKEN_OPTIONS`) where there is one.
        """
        if not self.has_tokens:
            hint = TOKEN_OPTIONS.get(what)
            what = what[:1].upper() + what[1:]
            raise AbsclipError(f"{what} need a ViT image tower with tokens; {self.name} has none"
                               f"{f' ({hint})' if hint else ''}.")

    def block_index(self, layer: int) -> int:
        """Return the non-negative block index for ``layer`` (negative counts from the end), range-checked."""
        n = self.facts.num_blocks
        idx = layer + n if layer < 0 else layer
        if not 0 <= idx < n:
            raise AbsclipError(f"Block index {layer} is out of range for a {n}-block image tower.")
        return idx

    @property
    @abstractmethod
    def logit_scale(self) -> float:
        """The model's learned logit scale (exp), turning cosine logits into probabilities."""

    @property
    def logit_bias(self) -> float | None:
        """The model's learned logit bias (SigLIP family), or None for softmax-trained models.

        Where it is not None, class probabilities of cosine-logit methods are
        ``sigmoid(logit_scale * cos + logit_bias)`` (as the Hugging Face zero-shot pipeline does for SigLIP).
        """
        return None

    @property
    def fused_path(self) -> bool:
        """Whether image encoding runs a fused forward whose last block is computed for the CLS token only."""
        return False

    def unfused(self) -> Backbone:
        """Return an adapter over the same weights that runs the model's own modules (no fused path).

        The benchmark's reference-style pipeline uses it; ``self`` is not changed.
        """
        return self

    def cast(self, dtype: torch.dtype, *, inplace: bool = False) -> Backbone:
        """Return this backbone with its weights (``self.model``) cast to ``dtype``.

        By default the weights are copied and ``self`` is unchanged; ``inplace=True`` casts
        ``self``'s own weights (no second copy in memory) and returns ``self``.
        """
        if dtype == self.dtype:
            return self
        if inplace:
            self.model.to(dtype)
            self.dtype = dtype
            return self
        new = copy.copy(self)
        new.model = copy.deepcopy(self.model).to(dtype)
        new.dtype = dtype
        new._after_copy_cast()
        return new

    def _after_copy_cast(self) -> None:
        """Rebuild what a copy cast by :meth:`cast` derives from its new weights (nothing by default)."""
        return None

    def tower_flops(self) -> dict[str, float]:
        """Return FLOP building blocks of one image-tower forward (:func:`tower_flops` of ``facts``)."""
        self.require_tokens("FLOP estimates")
        return tower_flops(self.facts)

    # -- image side ----------------------------------------------------------------------------
    @abstractmethod
    def encode_images(self, pixels: torch.Tensor) -> torch.Tensor:
        """Return normalised image embeddings ``[B, D]`` (fp32) for preprocessed pixels ``[B, 3, H, W]``."""

    def encode_images_dropped(self, pixels: torch.Tensor, keep: torch.Tensor) -> torch.Tensor:
        """Return normalised embeddings ``[B, D]`` keeping only patches ``keep`` ``[B, k]`` (token dropping)."""
        raise AbsclipError(f"Token dropping needs a plain ViT image tower with a fused path; {self.name} has none.")

    @abstractmethod
    def tokens_before(self, pixels: torch.Tensor, layer: int) -> torch.Tensor:
        """Return the tokens entering block ``layer``: ``[B, 1 + rows*cols, width]`` (CLS first, row-major)."""

    @abstractmethod
    def forward_from(self, tokens: torch.Tensor, layer: int) -> torch.Tensor:
        """Run blocks ``layer ..`` on ``tokens`` ``[B, T, width]``, pool, project; return normalised ``[B, D]``."""

    @abstractmethod
    def cls_attention(self, tokens: torch.Tensor, layer: int = -1) -> torch.Tensor:
        """Return the CLS→patch attention ``[B, heads, rows*cols]`` of block ``layer`` for its input ``tokens``.

        Recomputed explicitly as ``softmax(q k^T / sqrt(d_head))``; rows sum to 1 over all keys
        (CLS included); the patch part is returned.
        """

    @abstractmethod
    def block_attentions(self, pixels: torch.Tensor, last: int = -1) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        """Return ``(attentions, outputs)`` of image blocks ``0 .. last``, running the blocks one at a time.

        ``attentions[l]`` is ``[B, heads, T, T]`` (fp32, CPU, rows sum to 1) and ``outputs[l]`` the
        block's output tokens ``[B, T, width]`` (fp32, CPU), CLS first.
        """

    @abstractmethod
    def patch_embeddings(self, tokens: torch.Tensor, layer: int = -1) -> torch.Tensor:
        """Return L2-normalised patch embeddings in the joint space ``[B, rows*cols, D]`` (fp32, CPU).

        Runs blocks ``layer ..`` on ``tokens`` (the tokens entering block ``layer``), then the
        final norm and projection on every patch token (CLS dropped).
        """

    # -- text side -----------------------------------------------------------------------------
    @abstractmethod
    def encode_texts(self, texts: list[str], batch_size: int = 256, *,
                     on_batch: Callable[[int], Any] | None = None) -> torch.Tensor:
        """Return normalised text embeddings ``[T, D]`` (fp32, on the CPU); long texts are truncated.

        ``on_batch`` is called with the number of texts after each batch (progress bars). The result
        never depends on ``batch_size`` or on the order of ``texts`` beyond float rounding.
        """

    def describe(self) -> dict[str, Any]:
        """Return a JSON-able description of the backbone (for results provenance)."""
        return {
            "model": self.name,
            "pretrained": self.pretrained,
            "identity": self.identity,
            "dtype": str(self.dtype).replace("torch.", ""),
            "grid": list(self.facts.grid),
            "blocks": self.facts.num_blocks,
        }

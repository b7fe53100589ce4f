"""Fused inference path for open_clip ``VisionTransformer`` image towers: the same maths, less work.

Exact rewrites of open_clip's forward (results differ only by float rounding, ~1e-6 on
unnormalised embeddings; the golden parity tests run through this path):

* **Patch embedding as one matrix product.** The stride-``p`` ``p × p`` convolution without bias
  is a reshape of the pixels into ``[B, G*G, 3*p*p]`` patches times the flattened kernel.
  oneDNN's convolution was ~5% of a ViT-B/16 forward on the project CPU for 0.7% of its FLOPs.
* **Scaled-dot-product attention.** Each block computes ``q, k, v`` with one ``in_proj`` product
  and calls ``F.scaled_dot_product_attention`` (a fused, flash-style CPU/GPU kernel) instead of
  ``nn.MultiheadAttention``'s inference fast path (explicit ``bmm`` + softmax + copies).
* **oneDNN matrix products on CPU.** Every linear layer of the blocks runs through oneDNN's
  inner product (``torch.ops.mkldnn._linear_pointwise``, the op ``torch.compile`` emits for CPU
  linears) with the MLP's activation fused in, instead of ``F.linear`` (MKL sgemm) + activation. On the
  project's AMD CPU this ran the ViT-B/16 tower ~15–25% faster in fp32 (see
  ``docs/benchmarks.md``); same maths, ~1e-6 rounding differences. ``ABSCLIP_ONEDNN=0`` turns it off.
* **QuickGELU as a fused swish.** OpenAI weights use QuickGELU, ``y * sigmoid(1.702 y)``, which is
  ``swish(1.702 y) / 1.702``. oneDNN fuses swish (``x * sigmoid(x)``) but not its scale, so the
  factor 1.702 goes onto the MLP's input and first bias and 1/1.702 onto its output: elementwise
  work on the 768-wide tensors instead of the 3072-wide hidden one, and no copy of any weight.
* **CLS-only last block.** A CLS-pooled tower only reads the CLS token after the last block, and
  every other token only influences it through the last block's keys and values. The last block
  therefore computes keys/values for all tokens but the query, attention output, MLP and
  ``ln_post`` for the CLS token alone: ~1/6 of that block's FLOPs. This applies to every pixel
  crop, the full image and every feature crop.

Optional, and *not* exact (used only by ABS's opt-in fast mode): ``keep`` drops patch tokens
after the patch + positional embedding (HiRED-style token dropping), so the transformer runs on
``1 + k`` tokens.

Only plain ViT towers qualify (``ResidualAttentionBlock`` blocks with ``nn.MultiheadAttention``,
CLS-token pooling, no attentional pooler); :func:`fused_vit` returns ``None`` for anything else
and callers keep open_clip's own modules."""

from __future__ import annotations

import logging
import os

import torch
import torch.nn.functional as F
from torch import nn

log = logging.getLogger(__name__)


def _unsupported_reason(visual: nn.Module) -> str | None:
    """Return why ``visual`` cannot use the fused path, or None when it can."""
    for attr in ("conv1", "class_embedding", "positional_embedding", "ln_pre", "ln_post", "transformer"):
        if not hasattr(visual, attr):
            return f"no {attr}"
    conv = visual.conv1
    if not isinstance(conv, nn.Conv2d) or conv.bias is not None or conv.groups != 1 \
            or tuple(conv.kernel_size) != tuple(conv.stride) or tuple(conv.padding) != (0, 0) \
            or tuple(conv.dilation) != (1, 1):
        return "patch embedding is not a plain non-overlapping convolution"
    if getattr(visual, "attn_pool", None) is not None or getattr(visual, "pool_type", "tok") != "tok":
        return "pooling is not the CLS token"
    if getattr(visual, "final_ln_after_pool", False):
        return "final_ln_after_pool"
    if not isinstance(getattr(visual, "patch_dropout", nn.Identity()), nn.Identity) and visual.patch_dropout.training:
        return "patch dropout active"
    for blk in visual.transformer.resblocks:
        attn = getattr(blk, "attn", None)
        if not isinstance(attn, nn.MultiheadAttention) or not attn._qkv_same_embed_dim or attn.in_proj_weight is None:
            return f"block {type(blk).__name__} has no standard nn.MultiheadAttention"
        if hasattr(blk, "ln_1_kv") or not all(hasattr(blk, a) for a in ("ln_1", "ln_2", "mlp", "ls_1", "ls_2")):
            return f"block {type(blk).__name__} has an unsupported structure"
        if attn.bias_k is not None or attn.add_zero_attn:
            return "attention with bias_k/add_zero_attn"
    return None


def _onednn_usable() -> bool:
    """Return whether oneDNN linears can run here (the op is present and ``ABSCLIP_ONEDNN`` is not 0)."""
    if os.environ.get("ABSCLIP_ONEDNN", "1").strip().lower() in ("0", "false", "no", "off"):
        return False
    ops = getattr(torch.ops, "mkldnn", None)
    try:
        return bool(torch.backends.mkldnn.is_available()) and ops is not None and hasattr(ops, "_linear_pointwise")
    except (AttributeError, RuntimeError):
        return False


class OneDNNLinear:
    """Linear layers through oneDNN's inner product on CPU (fp32/bf16), else ``F.linear``.

    The weight is passed in its own (dense) layout, so nothing is copied or cached: prepacking it
    into oneDNN's blocked layout was only ~5% faster and costs a second copy of the tower's
    weights (~340 MB for ViT-B/16 fp32). If oneDNN refuses a shape or dtype once, this object
    falls back to ``F.linear`` for good.
    """

    def __init__(self, enabled: bool | None = None) -> None:
        self.enabled = _onednn_usable() if enabled is None else enabled

    def __call__(self, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None,
                 act: str = "none") -> torch.Tensor:
        """Return ``F.linear(x, weight, bias)`` followed by ``act``: ``none``, exact ``gelu`` or ``swish``."""
        if self.enabled and x.device.type == "cpu" and x.dtype in (torch.float32, torch.bfloat16) \
                and weight.dtype == x.dtype and (bias is None or bias.dtype == x.dtype):
            try:
                return torch.ops.mkldnn._linear_pointwise(x, weight, bias, act, [], "none" if act == "gelu" else "")
            except RuntimeError as e:  # an unsupported case: use torch's own path from now on
                log.debug("oneDNN linear off (%s); using F.linear", e)
                self.enabled = False
        y = F.linear(x, weight, bias)
        return _ACTIVATIONS[act](y)


#: the activations :class:`OneDNNLinear` fuses, as torch functions (its fallback path)
_ACTIVATIONS = {"none": lambda y: y, "gelu": F.gelu, "swish": F.silu}
#: QuickGELU's factor: ``quick_gelu(y) = y * sigmoid(QUICK_GELU_SCALE * y)`` (open_clip's ``QuickGELU``)
QUICK_GELU_SCALE = 1.702


def mlp_activation(mlp: nn.Module) -> str | None:
    """Return ``gelu`` (exact) or ``quick_gelu`` when ``mlp`` is open_clip's ``c_fc -> activation -> c_proj``
    with that activation (which the fused path fuses), else None."""
    fc, act, proj = (getattr(mlp, a, None) for a in ("c_fc", "gelu", "c_proj"))
    if not (isinstance(fc, nn.Linear) and isinstance(proj, nn.Linear) and len(list(mlp.children())) == 3):
        return None
    if type(act) is nn.GELU and act.approximate == "none":
        return "gelu"
    return "quick_gelu" if _is_quick_gelu(act) else None


def _is_quick_gelu(act: nn.Module | None) -> bool:
    try:
        from open_clip.transformer import QuickGELU
    except ImportError:  # no open_clip: no open_clip tower either
        return False
    return type(act) is QuickGELU


class FusedViT:
    """Fused forward of an open_clip ``VisionTransformer`` (see the module docstring).

    All methods take and return batch-first tensors in the tower's dtype and device.
    """

    def __init__(self, visual: nn.Module, onednn: bool | None = None) -> None:
        self.visual = visual
        self.blocks = list(visual.transformer.resblocks)
        conv = visual.conv1
        self.patch = int(conv.kernel_size[0]), int(conv.kernel_size[1])
        self.width = int(conv.out_channels)
        self.linear = OneDNNLinear(onednn)
        self._activation = {id(b): mlp_activation(b.mlp) for b in self.blocks}
        acts = set(self._activation.values())
        #: the MLP activation every block fuses (``gelu`` or ``quick_gelu``); None: some block runs its own MLP
        self.activation = acts.pop() if len(acts) == 1 else None

    def _mlp(self, blk: nn.Module, h: torch.Tensor) -> torch.Tensor:
        act = self._activation[id(blk)]
        if act is None:
            return blk.mlp(h)
        fc, proj = blk.mlp.c_fc, blk.mlp.c_proj
        if act == "gelu":
            return self.linear(self.linear(h, fc.weight, fc.bias, "gelu"), proj.weight, proj.bias)
        # y * sigmoid(1.702 y) = swish(1.702 y) / 1.702, with y = h W^T + b: scale h and b, not the hidden tensor
        bias = fc.bias * QUICK_GELU_SCALE if fc.bias is not None else None
        h = self.linear(self.linear(h * QUICK_GELU_SCALE, fc.weight, bias, "swish"), proj.weight, None)
        if proj.bias is None:
            return h.mul_(1 / QUICK_GELU_SCALE)
        return torch.add(proj.bias, h, alpha=1 / QUICK_GELU_SCALE)

    # -- embedding -----------------------------------------------------------------------------
    def embed(self, pixels: torch.Tensor, keep: torch.Tensor | None = None) -> torch.Tensor:
        """Return the tokens entering block 0: ``[B, 1 + N, width]`` (CLS first, row-major patches).

        Args:
            pixels: ``[B, 3, H, W]`` preprocessed images.
            keep: optional ``[B, k]`` patch indices (0..G*G-1) to keep after the positional
                embedding (token dropping); None keeps all ``N = G*G`` patches.
        """
        v = self.visual
        b, c, h, w = pixels.shape
        ph, pw = self.patch
        gh, gw = h // ph, w // pw
        patches = pixels.reshape(b, c, gh, ph, gw, pw).permute(0, 2, 4, 1, 3, 5).reshape(b, gh * gw, c * ph * pw)
        x = patches @ v.conv1.weight.reshape(self.width, -1).T  # [B, G*G, width]
        pos = v.positional_embedding.to(x.dtype)
        x = x + pos[1:]
        cls = (v.class_embedding.to(x.dtype) + pos[0]).expand(b, 1, -1)
        if keep is not None:
            x = torch.gather(x, 1, keep.to(x.device).unsqueeze(-1).expand(-1, -1, x.shape[-1]))
        x = torch.cat([cls, x], dim=1)
        return v.ln_pre(x)

    # -- blocks --------------------------------------------------------------------------------
    def block(self, blk: nn.Module, x: torch.Tensor) -> torch.Tensor:
        """Run one ``ResidualAttentionBlock`` on ``x`` ``[B, T, width]`` with fused attention."""
        attn = blk.attn
        b, t, width = x.shape
        heads = attn.num_heads
        qkv = self.linear(blk.ln_1(x), attn.in_proj_weight, attn.in_proj_bias)
        qkv = qkv.view(b, t, 3, heads, width // heads).permute(2, 0, 3, 1, 4)  # [3, B, heads, T, dh]
        o = F.scaled_dot_product_attention(qkv[0], qkv[1], qkv[2])  # [B, heads, T, dh]
        del qkv  # intermediates are released as soon as possible: peak memory is per view batch
        o = self.linear(o.transpose(1, 2).reshape(b, t, width), attn.out_proj.weight, attn.out_proj.bias)
        x = x + blk.ls_1(o)
        del o
        return x + blk.ls_2(self._mlp(blk, blk.ln_2(x)))

    def block_cls(self, blk: nn.Module, x: torch.Tensor) -> torch.Tensor:
        """Run one block for the CLS query only: returns the CLS output ``[B, 1, width]``.

        Keys and values come from all tokens, as in the full block, so the CLS output is the
        same as the full block's first row.
        """
        attn = blk.attn
        b, t, width = x.shape
        heads = attn.num_heads
        w, bias = attn.in_proj_weight, attn.in_proj_bias
        h = blk.ln_1(x)
        q = self.linear(h[:, :1], w[:width], bias[:width] if bias is not None else None)
        kv = self.linear(h, w[width:], bias[width:] if bias is not None else None)
        q = q.view(b, 1, heads, width // heads).transpose(1, 2)  # [B, heads, 1, dh]
        kv = kv.view(b, t, 2, heads, width // heads).permute(2, 0, 3, 1, 4)  # [2, B, heads, T, dh]
        o = F.scaled_dot_product_attention(q, kv[0], kv[1]).transpose(1, 2).reshape(b, 1, width)
        x = x[:, :1] + blk.ls_1(self.linear(o, attn.out_proj.weight, attn.out_proj.bias))
        return x + blk.ls_2(self._mlp(blk, blk.ln_2(x)))

    def run_blocks(self, x: torch.Tensor, start: int, stop: int) -> torch.Tensor:
        """Run blocks ``start .. stop-1`` on all tokens; return ``[B, T, width]``."""
        for blk in self.blocks[start:stop]:
            x = self.block(blk, x)
        return x

    def forward_from(self, x: torch.Tensor, start: int) -> torch.Tensor:
        """Run blocks ``start ..`` (the last one CLS-only), ``ln_post`` and the projection.

        Args:
            x: ``[B, T, width]`` tokens entering block ``start`` (CLS first).

        Returns:
            ``[B, D]`` unnormalised image embeddings in the tower's dtype.
        """
        x = self.run_blocks(x, start, len(self.blocks) - 1)
        x = self.block_cls(self.blocks[-1], x)[:, 0]
        x = self.visual.ln_post(x)
        proj = getattr(self.visual, "proj", None)
        return x @ proj if proj is not None else x

    def encode(self, pixels: torch.Tensor, keep: torch.Tensor | None = None) -> torch.Tensor:
        """Return unnormalised embeddings ``[B, D]`` of preprocessed pixels (optionally token-dropped)."""
        return self.forward_from(self.embed(pixels, keep), 0)


def fused_vit(visual: nn.Module) -> FusedViT | None:
    """Return a :class:`FusedViT` for ``visual``, or None (logged at debug level) if it does not qualify."""
    reason = _unsupported_reason(visual)
    if reason is not None:
        log.debug("fused ViT path not used for %s: %s", type(visual).__name__, reason)
        return None
    return FusedViT(visual)

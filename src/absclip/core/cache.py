"""TDA's dynamic key-value caches: earlier test features, keyed by their pseudo-labels.

TDA (Karmanov et al., CVPR 2024, github.com/kdiAAA/TDA) keeps, per pseudo-label, the few test
features with the lowest prediction entropy. The positive cache adds ``alpha * exp(-beta (1 -
cos)) @ one_hot(label)`` to CLIP's logits; the negative cache, filled only with images of middling
entropy, subtracts the same kernel times a mask of the classes those images found unlikely but
not impossible. The caches are the only state an absclip method carries across images."""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch


@dataclass
class CacheEntry:
    """One cached test image: its feature ``[D]``, prediction entropy and class probabilities ``[C]``."""

    feature: torch.Tensor
    entropy: float
    probs: torch.Tensor | None = None


@dataclass
class KeyValueCache:
    """At most ``capacity`` entries per pseudo-label, lowest entropy first."""

    capacity: int
    entries: dict[int, list[CacheEntry]] = field(default_factory=dict)

    def update(self, label: int, entry: CacheEntry) -> None:
        """Add ``entry`` under ``label``; when full, it replaces the highest-entropy entry if lower."""
        items = self.entries.setdefault(int(label), [])
        if len(items) < self.capacity:
            items.append(entry)
        elif entry.entropy < items[-1].entropy:
            items[-1] = entry
        items.sort(key=lambda e: e.entropy)

    def __len__(self) -> int:
        return sum(len(v) for v in self.entries.values())

    def logits(self, feature: torch.Tensor, alpha: float, beta: float, num_classes: int,
               mask: tuple[float, float] | None = None) -> torch.Tensor:
        """Return ``alpha * exp(-(beta - beta * cos(feature, keys))) @ values`` ``[C]``.

        Values are the one-hot pseudo-labels, or with ``mask = (lo, hi)`` the indicator
        ``lo < p < hi`` of each entry's class probabilities (the negative cache).
        """
        ordered = [e for label in sorted(self.entries) for e in self.entries[label]]
        keys = torch.stack([e.feature for e in ordered])
        if mask is None:
            labels = torch.tensor([label for label in sorted(self.entries) for _ in self.entries[label]])
            values = torch.nn.functional.one_hot(labels, num_classes).to(feature.dtype)
        else:
            probs = torch.stack([e.probs for e in ordered])
            values = ((probs > mask[0]) & (probs < mask[1])).to(feature.dtype)
        affinity = feature[None] @ keys.T  # [1, N]: TDA's shapes, so the float32 sums run in its order
        return alpha * (((-1) * (beta - beta * affinity)).exp() @ values)[0]


def entropy(logits: torch.Tensor) -> float:
    """Return the entropy (nats) of ``softmax(logits)`` for one image's logits ``[C]``."""
    return float(-(logits.softmax(-1) * logits.log_softmax(-1)).sum(-1))


def normalised_entropy(value: float, num_classes: int) -> float:
    """Return TDA's entropy ratio: nats divided by ``log2(C)`` (as its code does; not a true [0, 1] ratio)."""
    return value / math.log2(num_classes)

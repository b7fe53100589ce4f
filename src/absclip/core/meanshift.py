"""MTA's mode seeking: a MeanShift mode of the view embeddings with jointly optimised inlierness scores.

MTA (Zanella & Ben Ayed, CVPR 2024, github.com/MaxZanella/MTA) alternates two steps from the
original image's embedding: (1) inlierness scores ``y`` (a softmax over views) that favour views
near the mode and views whose class predictions agree with those of other inliers, (2) Gaussian
MeanShift steps weighted by ``y``, renormalised to the sphere. The class scores are those of
the mode. Each view has its own kernel bandwidth, from the mean squared distance to its nearest
neighbours."""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class MeanShiftResult:
    """The mode ``[D]`` (unit norm) and the final inlierness scores ``[V]`` (summing to 1)."""

    mode: torch.Tensor
    inlierness: torch.Tensor


def gaussian_density(point: torch.Tensor, bandwidth: torch.Tensor, features: torch.Tensor) -> torch.Tensor:
    """Return ``exp(-|f_i - point|^2 / (2 h_i^2))`` ``[V]`` for features ``[V, D]`` and bandwidths ``[V]``."""
    dist = torch.norm(features - point, dim=-1, p=2)
    return torch.exp(-dist**2 / (2 * bandwidth**2))


def view_bandwidths(features: torch.Tensor, neighbours: float) -> torch.Tensor:
    """Return each view's bandwidth ``sqrt(0.5 * mean squared distance to its k nearest others)``.

    ``k = int(neighbours * (V - 1))``; the nearest entry (the view itself) is left out.
    """
    dist = torch.cdist(features, features)
    ranked, _ = torch.sort(dist, dim=1)
    k = int(neighbours * (features.shape[0] - 1))
    return torch.sqrt(0.5 * torch.mean(ranked[:, 1 : k + 1] ** 2, dim=1))


def mta_mode(features: torch.Tensor, logits: torch.Tensor, *, lambda_y: float, lambda_q: float,
             iterations: int, inner_iterations: int, tolerance: float, neighbours: float,
             temperature: float = 1.0) -> MeanShiftResult:
    """Return MTA's mode of view embeddings ``[V, D]`` (row 0: the original image).

    Args:
        features: unit-norm view embeddings.
        logits: their class logits ``[V, C]`` (scaled as CLIP's: ``logit_scale * cosine``).
        lambda_y: weight of the entropic term (a softmax temperature on the inlierness objective).
        lambda_q: weight of the quadratic (prediction agreement) term.
        iterations: outer alternations of the two steps.
        inner_iterations: most steps of each inner loop (inlierness, MeanShift).
        tolerance: an inner loop stops when its variable moves less than this (L2).
        neighbours: fraction of the other views used for each bandwidth.
        temperature: softmax temperature of the predictions that define the agreement.
    """
    n = features.shape[0]
    bandwidth = view_bandwidths(features, neighbours)
    probs = (logits / temperature).softmax(1)
    affinity = probs @ probs.t()
    y = torch.ones(n, dtype=features.dtype) / n
    mode = features[0]
    for _ in range(iterations):
        density = gaussian_density(mode, bandwidth, features)
        for _ in range(inner_iterations):
            previous = y
            y = torch.softmax(1 / lambda_y * (density + lambda_q * torch.sum(affinity * y.unsqueeze(0), dim=1)),
                              dim=-1)
            if torch.norm(previous - y) < tolerance:
                break
        for _ in range(inner_iterations):
            previous = mode
            weights = gaussian_density(mode, bandwidth, features) * y
            mode = torch.sum(weights.unsqueeze(1) * features, dim=0) / torch.sum(weights)
            mode = mode / mode.norm(p=2, dim=-1)
            if torch.norm(previous - mode) < tolerance:
                break
    return MeanShiftResult(mode, y)

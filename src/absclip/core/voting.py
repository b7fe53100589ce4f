"""ZERO's zero-temperature voting: the most confident views each vote for their top class.

ZERO (Farina et al., NeurIPS 2024, github.com/FarinaMatteo/zero) keeps the fraction ``keep`` of
views whose softmax has the lowest entropy, sets the softmax temperature to (numerically) zero
so that every kept view contributes a one-hot vote for its argmax, and sums the votes. A tie
between classes is broken by the discarded views, most confident first: the first whose argmax
is one of the tied classes wins one more vote."""

from __future__ import annotations

import torch


def confident_order(logits: torch.Tensor, logit_scale: float) -> torch.Tensor:
    """Return the view indices ``[V]`` by increasing entropy of ``softmax(logit_scale * logits)``."""
    probs = (logits / (1.0 / logit_scale)).softmax(-1)  # ZERO divides by its temperature 1 / scale
    entropy = -(probs * probs.log()).sum(-1)
    return torch.argsort(entropy, stable=True)


def zero_votes(logits: torch.Tensor, logit_scale: float, keep: float) -> torch.Tensor:
    """Return ZERO's class scores ``[C]`` for one image's view logits ``[V, C]`` (cosine similarities).

    The score of a class is the number of kept views (``int(V * keep)``, most confident first)
    whose argmax it is; when several classes share the most votes, the winner (see the module
    docstring) gets one vote more, so ``argmax`` is ZERO's prediction.
    """
    order = confident_order(logits, logit_scale)
    k = int(logits.shape[0] * keep)
    kept = logits[order[:k]]
    zero_temperature = torch.finfo(kept.dtype).eps
    votes = (kept / zero_temperature).softmax(-1).sum(0)  # one-hot rows unless a view's logits tie exactly
    if k == 0:
        return votes
    best = votes.max()
    ties = torch.nonzero(votes == best).flatten().tolist()
    if len(ties) > 1:
        votes[tie_winner(ties, logits[order[k:]])] += 1
    return votes


def tie_winner(ties: list[int], discarded: torch.Tensor) -> int:
    """Return the tied class chosen by the discarded views ``[V', C]`` (most confident first).

    The first discarded view whose argmax is a tied class decides. If none does, the most
    confident discarded view's logits restricted to the tied classes decide (ZERO's intent; its
    code masks the wrong classes there, see docs/methods.md), and without discarded views the
    lowest tied index.
    """
    for pred in discarded.argmax(-1).tolist():
        if pred in ties:
            return int(pred)
    if discarded.shape[0] == 0:
        return min(ties)
    idx = torch.tensor(ties)
    return int(idx[discarded[0, idx].argmax()])

"""Attention sources and maps: where ABS looks (DINO, CLIP self-attention, rollout, attention sinks)."""

"""Pure building blocks: crop geometry, the per-image sampler, scoring, settings, timers. No model, no I/O."""

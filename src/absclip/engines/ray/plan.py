"""Sizing a run: the resources of the light stages, the resolved :class:`Plan` and :func:`make_plan`,
which fills in defaults from the cluster's resources and refuses a plan a fixed cluster cannot hold."""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass

from absclip.engines.ray.options import RayOptions
from absclip.errors import AbsclipError

log = logging.getLogger(__package__)  # "absclip.engines.ray", the logger of the module before the split

#: logical CPUs reserved by the light stages (decode, write) and by one attention actor
DECODE_CPUS = 0.25
WRITE_CPUS = 0.1
ATTENTION_CPUS = 0.25


@dataclass(frozen=True)
class Plan:
    """Resolved actor counts, resources and batch sizes of one run (printed at start)."""

    actors: int
    cpus_per_actor: float
    gpus_per_actor: float
    threads_per_actor: int
    attention_stage: bool
    attention_actors: int
    batch_size: int
    decode_batch_size: int
    cluster_cpus: float
    cluster_gpus: float

    def describe(self) -> str:
        """Return one line: the knobs and their values."""
        gpu = f", {self.gpus_per_actor:g} GPU" if self.gpus_per_actor else ""
        att = f"attention stage {self.attention_actors} actor(s) x {ATTENTION_CPUS:g} CPU" if self.attention_stage \
            else "attention in the actors (if needed)"
        return (f"ray: {self.actors} actor(s) x ({self.cpus_per_actor:g} CPU{gpu}, {self.threads_per_actor} torch "
                f"thread(s)); {att}; batch {self.batch_size}, decode batch {self.decode_batch_size}; cluster "
                f"{self.cluster_cpus:g} CPU, {self.cluster_gpus:g} GPU")


def make_plan(options: RayOptions, cluster_cpus: float, cluster_gpus: float, *, batch_size: int,
              attention_separable: bool, fixed: bool = False) -> Plan:
    """Return the plan for ``options`` on a cluster with these resources (defaults filled in).

    Defaults: with GPUs, one actor per ``gpus_per_actor`` share of the cluster's GPUs and the
    attention inside the actors; without, 1 CPU per actor, attention in a CPU stage and as many
    actors as fit next to the light stages. ``attention_separable`` is False for CLIP's own
    attention, which always runs inside the actors.

    Raises:
        AbsclipError: the plan does not fit a ``fixed`` cluster (one that cannot grow, such as the
            local instance absclip started), where Ray Data would wait for resources forever.
    """
    gpus = float(options.gpus_per_actor or 0.0)
    cpus = float(options.cpus_per_actor or 1.0)
    placement = options.attention or ("actor" if gpus else "stage")
    stage = placement == "stage" and attention_separable
    att_actors = (options.attention_actors or 1) if stage else 0
    light = DECODE_CPUS + WRITE_CPUS + att_actors * ATTENTION_CPUS
    if options.actors is not None:
        actors = options.actors
    elif gpus:
        actors = max(1, int(cluster_gpus // gpus))
    else:
        actors = max(1, int((cluster_cpus - light) // cpus))
    problems = []
    if actors * cpus + light > cluster_cpus + 1e-9:
        problems.append(f"{actors} actor(s) x {cpus:g} CPU plus {light:g} CPU for the decode/attention/write stages "
                        f"exceed the cluster's {cluster_cpus:g} CPUs (fractions such as `cpus_per_actor` 0.5 work)")
    if gpus and actors * gpus > cluster_gpus + 1e-9:
        problems.append(f"{actors} actor(s) x {gpus:g} GPU exceed the cluster's {cluster_gpus:g} GPUs")
    if problems and fixed:
        raise AbsclipError("; ".join(problems) + "; lower `actors` or the per-actor resources.")
    for p in problems:
        log.warning("%s; the run waits for resources unless the cluster grows.", p)
    bs = options.batch_size or batch_size
    return Plan(actors, cpus, gpus, max(1, math.ceil(cpus)), stage, att_actors, bs, options.decode_batch_size or bs,
                float(cluster_cpus), float(cluster_gpus))

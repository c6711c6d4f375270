"""The cleanest samples: on a shared machine, the rounds (or slices) least disturbed by
other processes are the ones kept (``bench.runner``)."""

from __future__ import annotations

from typing import Protocol, TypeVar

from bench.results import Picked, Usage
from bench.rigs.fanout import FanoutPhase, PacedSlices, merge_slices


class Sampled(Protocol):
    """A measurement with the CPU usage of its window."""

    @property
    def usage(self) -> Usage: ...


S = TypeVar("S", bound=Sampled)


def interference(usage: Usage, server_cpus: set[int], gen_cpus: set[int]) -> float:
    """CPU time on the benchmark's CPUs that neither the server nor the generator used
    (other tenants of a shared machine), plus steal, as a share of one CPU."""
    cpus = usage.machine_cpus or {}
    foreign = 0.0
    for cpu in server_cpus | gen_cpus:
        busy = cpus.get(f"cpu{cpu}_busy", 0.0)
        own = 0.0
        if cpu in server_cpus:
            own += usage.server_cpu_util
        if cpu in gen_cpus:
            own += usage.generator_cpu_util
        foreign += max(0.0, busy - own) + cpus.get(f"cpu{cpu}_steal", 0.0)
    return foreign


def cleanest(samples: list[S], server_cpus: set[int], gen_cpus: set[int]) -> Picked[S]:
    """The round least disturbed by other processes; every round stays in ``rounds``."""
    if len(samples) == 1:
        return Picked(
            sample=samples[0], interference=interference(samples[0].usage, server_cpus, gen_cpus)
        )
    scores = [interference(s.usage, server_cpus, gen_cpus) for s in samples]
    best = min(range(len(samples)), key=scores.__getitem__)
    return Picked(
        sample=samples[best],
        interference=scores[best],
        round_chosen=best + 1,
        rounds=[
            Picked(sample=sample, interference=score)
            for sample, score in zip(samples, scores, strict=True)
        ],
    )


def keep_cleanest(
    slices: list[FanoutPhase],
    raws: list[tuple[list[int], list[int]]],
    share: float,
    server_cpus: set[int],
    gen_cpus: set[int],
) -> PacedSlices:
    """The paced fan-out pooled from the ``share`` of its slices least disturbed."""
    scores = [interference(x.usage, server_cpus, gen_cpus) for x in slices]
    scored = [Picked(sample=x, interference=s) for x, s in zip(slices, scores, strict=True)]
    count = max(1, round(len(slices) * share))
    keep = sorted(sorted(range(len(slices)), key=scores.__getitem__)[:count])
    return merge_slices(scored, raws, keep)

"""What every measurement returns: frozen dataclasses, and how they become results.json.

A result is built once, at the end of its measurement, and never changed. :func:`to_json`
turns it into the plain data of ``results.json``: one key per field, in field order, except
that a field marked :data:`FLAT` has its own keys merged in its place (a :class:`Usage` sits
flat among the figures it was measured with) and a field marked :data:`OMIT_NONE` is left out
while it is None (keys that only some results carry).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, fields, is_dataclass
from types import MappingProxyType
from typing import Any, Generic, TypeVar

T = TypeVar("T")

# ``field(metadata=FLAT)``: the field's own keys stand in its place in the JSON (no nesting).
FLAT = MappingProxyType({"flat": True})
# ``field(default=None, metadata=OMIT_NONE)``: left out of the JSON while it is None.
OMIT_NONE = MappingProxyType({"omit_none": True})


def to_json(value: object) -> Any:
    """Plain data (dicts, lists, numbers, strings) for a result, as results.json holds it."""
    if is_dataclass(value) and not isinstance(value, type):
        out: dict[str, Any] = {}
        for f in fields(value):
            item = getattr(value, f.name)
            if f.metadata.get("omit_none") and item is None:
                continue
            if f.metadata.get("flat"):
                out.update(to_json(item))
            else:
                out[f.name] = to_json(item)
        return out
    if isinstance(value, Mapping):
        return {key: to_json(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [to_json(item) for item in value]
    return value


@dataclass(frozen=True, slots=True, kw_only=True)
class Usage:
    """Server and generator CPU over a measured window (:class:`bench.rigs.common.Meter`)."""

    elapsed_s: float
    server_cpu_s: float
    generator_cpu_s: float
    server_cpu_util: float
    generator_cpu_util: float
    machine_cpus: dict[str, float]


@dataclass(frozen=True, slots=True, kw_only=True)
class Latency:
    """p50 / p99 / max (and count) in milliseconds."""

    count: int
    p50_ms: float
    p99_ms: float
    max_ms: float


def percentiles(samples_ns: list[int]) -> Latency:
    """p50 / p99 / max (and count) in milliseconds."""
    if not samples_ns:
        nan = float("nan")
        return Latency(count=0, p50_ms=nan, p99_ms=nan, max_ms=nan)
    ordered = sorted(samples_ns)
    n = len(ordered)

    def at(q: float) -> float:
        return ordered[min(n - 1, int(q * n))] / 1e6

    return Latency(count=n, p50_ms=at(0.50), p99_ms=at(0.99), max_ms=ordered[-1] / 1e6)


@dataclass(frozen=True, slots=True, kw_only=True)
class Picked(Generic[T]):
    """A sample with its interference score; the chosen one of several rounds also names
    its round and carries every round (each scored)."""

    sample: T = field(metadata=FLAT)
    interference: float
    round_chosen: int | None = field(default=None, metadata=OMIT_NONE)
    rounds: list[Picked[T]] | None = field(default=None, metadata=OMIT_NONE)


# -- reading results.json back -------------------------------------------------------------


def dig(data: Any, path: tuple[str, ...]) -> Any:
    """``data[path[0]][path[1]]...``, or None where a key is missing."""
    for key in path:
        if not isinstance(data, dict) or key not in data:
            return None
        data = data[key]
    return data


def fmt(value: Any, digits: int = 1) -> str:
    """A figure as the table prints it ("-" for missing or NaN)."""
    if value is None:
        return "-"
    if isinstance(value, float):
        if value != value:  # NaN
            return "-"
        if abs(value) >= 1000:
            return f"{value:,.0f}"
        return f"{value:.{digits}f}"
    return str(value)

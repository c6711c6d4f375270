"""The validator study (issue 14): which JSON Schema library validates pushed events' ``args``.

For the 20 schemas of :mod:`bench.ruleset` it times, per library: compiling all of them, one
valid event's validation (four kinds of event, from a flat three-string object to a nested
one), and an invalid event's validation with its message. The libraries not installed are
skipped (the gateway depends on the one it chose; the others are for this study only):

    pip install jsonschema fastjsonschema jsonschema-rs
    python -m bench.studies.validators

A finished study: its figures and the choice are in the README ("Push rules and validation").
"""

from __future__ import annotations

import importlib
import time
from collections.abc import Callable
from typing import Any

from bench.ruleset import EVENT_SCHEMAS, sample_args

KINDS = ("v1.TodoCreated", "v1.TodoMoved", "v1.TodoTagged", "v1.AttachmentAdded")
INVALID = ("v1.TodoCreated", {"t": 1, "id": "x", "text": 42})

# name -> (compile one schema, validate: None when valid else the message)
Compiled = Callable[[Any], str | None]


def _jsonschema() -> Callable[[dict[str, Any]], Compiled]:
    jsonschema = importlib.import_module("jsonschema")

    def compile_(schema: dict[str, Any]) -> Compiled:
        validator = jsonschema.validators.validator_for(schema)(schema)

        def check(value: Any) -> str | None:
            if validator.is_valid(value):
                return None
            return str(jsonschema.exceptions.best_match(validator.iter_errors(value)).message)

        return check

    return compile_


def _fastjsonschema() -> Callable[[dict[str, Any]], Compiled]:
    fastjsonschema = importlib.import_module("fastjsonschema")

    def compile_(schema: dict[str, Any]) -> Compiled:
        validate = fastjsonschema.compile(schema)

        def check(value: Any) -> str | None:
            try:
                validate(value)
            except fastjsonschema.JsonSchemaValueException as exc:
                return str(exc.message)
            return None

        return check

    return compile_


def _jsonschema_rs() -> Callable[[dict[str, Any]], Compiled]:
    jsonschema_rs = importlib.import_module("jsonschema_rs")

    def compile_(schema: dict[str, Any]) -> Compiled:
        validator = jsonschema_rs.validator_for(schema)

        def check(value: Any) -> str | None:
            if validator.is_valid(value):
                return None
            return str(next(iter(validator.iter_errors(value))).message)

        return check

    return compile_


LIBRARIES: dict[str, Callable[[], Callable[[dict[str, Any]], Compiled]]] = {
    "jsonschema": _jsonschema,
    "fastjsonschema": _fastjsonschema,
    "jsonschema-rs": _jsonschema_rs,
}


def _per_call_us(fn: Callable[[], object], budget_s: float = 0.3) -> float:
    """Best of 5 rounds, each about ``budget_s / 5`` long: µs per call."""
    n, elapsed = 1, 0.0
    while elapsed < 0.01:
        n *= 2
        started = time.perf_counter()
        for _ in range(n):
            fn()
        elapsed = time.perf_counter() - started
    rounds = max(int(n * (budget_s / 5) / elapsed), 1)
    best = float("inf")
    for _ in range(5):
        started = time.perf_counter()
        for _ in range(rounds):
            fn()
        best = min(best, (time.perf_counter() - started) / rounds)
    return best * 1e6


def measure(name: str) -> dict[str, Any] | None:
    try:
        make = LIBRARIES[name]()
    except ImportError:
        return None
    started = time.perf_counter()
    compiled = {event: make(schema) for event, schema in EVENT_SCHEMAS.items()}
    compile_ms = (time.perf_counter() - started) * 1e3
    valid = {}
    for kind in KINDS:
        check, args = compiled[kind], sample_args(kind, 7)
        assert check(args) is None, (name, kind, check(args))
        valid[kind] = round(_per_call_us(lambda c=check, a=args: c(a)), 2)  # type: ignore[misc]
    bad_check = compiled[INVALID[0]]
    message = bad_check(INVALID[1])
    assert message is not None
    return {
        "compile_20_ms": round(compile_ms, 1),
        "valid_us": valid,
        "invalid_us": round(_per_call_us(lambda: bad_check(INVALID[1])), 2),
        "message": message,
    }


def main() -> None:
    for name in LIBRARIES:
        result = measure(name)
        if result is None:
            print(f"{name}: not installed")
            continue
        version = importlib.metadata.version(name)
        print(f"{name} {version}: {result}")


if __name__ == "__main__":
    import importlib.metadata

    main()

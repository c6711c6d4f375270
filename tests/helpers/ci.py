"""CI detection: a missing prerequisite skips a test locally and fails it under ``CI=true``."""

from __future__ import annotations

import os
from typing import NoReturn

import pytest


def in_ci() -> bool:
    return os.environ.get("CI", "").lower() in {"1", "true", "yes"}


def skip_or_fail(problem: str, *, ci_prefix: str = "") -> NoReturn:
    """Skip because of ``problem``; under CI, where nothing may be skipped, fail instead."""
    if in_ci():
        pytest.fail(ci_prefix + problem)
    pytest.skip(problem)

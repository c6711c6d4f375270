"""The code tables: one definition in gateway.errors, and a README that says the same."""

from __future__ import annotations

import re
from http import HTTPStatus
from pathlib import Path

import pytest

from gateway.errors import (
    RECONNECT_RANGE,
    TERMINAL_RANGE,
    CloseCode,
    GatewayError,
    Refusal,
    RefusalCode,
)

ROOT = Path(__file__).resolve().parents[2]
README = (ROOT / "README.md").read_text()


def _table(heading: str) -> list[list[str]]:
    """The rows of the first Markdown table under ``heading`` (cells, header excluded)."""
    section = README.split(heading, 1)[1]
    rows = []
    for line in section.splitlines():
        if line.startswith("|"):
            rows.append([cell.strip() for cell in line.strip("|").split("|")])
        elif rows:
            break
    return [row for row in rows[2:]]


class TestRefusalCodes:
    def test_readme_table_lists_every_code_with_its_status(self) -> None:
        """Each RefusalCode appears in the README's status table under its own status."""
        documented: dict[str, int] = {}
        for status, codes, _when in _table("### HTTP status codes"):
            for code in re.findall(r"`([A-Z_]+)`", codes):
                assert code not in documented, f"{code} is documented twice"
                documented[code] = int(status)
        assert documented == {code.name: int(code.status) for code in RefusalCode}

    def test_each_code_is_its_own_value_and_string(self) -> None:
        """Codes compare equal to their names, as logs and metric labels carry them."""
        for code in RefusalCode:
            assert code == code.name == str(code) == f"{code}"
            assert isinstance(code.status, HTTPStatus)

    def test_refusal_body_and_status(self) -> None:
        """A refusal's status comes from its code; the body is the documented JSON."""
        refusal = Refusal(code=RefusalCode.RATE_LIMITED, message="slow down")
        assert refusal.status == 429
        assert refusal.body() == b'{"error":{"code":"RATE_LIMITED","message":"slow down"}}'

    def test_no_refusal_code_literal_outside_errors(self) -> None:
        """Modules name refusal codes through the enum, never as string literals."""
        pattern = re.compile("|".join(rf"[\"']{code.name}[\"']" for code in RefusalCode))
        offenders = []
        for path in sorted((ROOT / "gateway").rglob("*.py")):
            if path.name == "errors.py":
                continue
            for number, line in enumerate(path.read_text().splitlines(), 1):
                if pattern.search(line):
                    offenders.append(f"{path.relative_to(ROOT)}:{number}: {line.strip()}")
        assert offenders == []


class TestCloseCodes:
    def test_readme_table_lists_every_close_code(self) -> None:
        """The README's close-code table documents exactly the CloseCode members."""
        documented = {int(row[0]) for row in _table("### WebSocket close codes")}
        assert documented == {int(code) for code in CloseCode}

    @pytest.mark.parametrize("code", list(CloseCode))
    def test_codes_sit_in_their_ranges(self, code: CloseCode) -> None:
        """Application codes are in 4000-4999: reconnect below 4500, terminal above."""
        assert 1000 <= code < 1016 or code in RECONNECT_RANGE or code in TERMINAL_RANGE


def test_every_exception_has_the_one_root() -> None:
    """Every exception class gateway defines derives from GatewayError."""
    import gateway.errors as errors

    classes = [
        value
        for value in vars(errors).values()
        if isinstance(value, type) and issubclass(value, BaseException)
    ]
    assert len(classes) >= 8
    assert all(issubclass(cls, GatewayError) for cls in classes)

"""systemd/gateway.service: what the unit must say, and ``systemd-analyze verify`` on it.

``verify`` checks that the binary in ExecStart= exists and that LoadCredential= sources can be
read, so the unit is copied to a temporary directory with ExecStart= pointing at this
repository's venv and the credentials at files created here; nothing else changes.
"""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest

from gateway.configfile import SECRET_KEYS
from tests.helpers.ci import in_ci
from tests.helpers.daemon import REPO

UNIT = REPO / "systemd" / "gateway.service"
INSTALLED_BINARY = "/opt/gateway/.venv/bin/gateway"
ANALYZE = shutil.which("systemd-analyze")


def parse_unit(text: str) -> dict[str, list[tuple[str, str]]]:
    """Sections of a unit file as ordered (key, value) pairs; keys may repeat."""
    sections: dict[str, list[tuple[str, str]]] = {}
    current: list[tuple[str, str]] | None = None
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line.startswith(("#", ";")):
            continue
        header = re.fullmatch(r"\[(.+)\]", line)
        if header:
            current = sections.setdefault(header.group(1), [])
            continue
        key, sep, value = line.partition("=")
        assert sep, f"not KEY=VALUE: {raw!r}"
        assert current is not None, f"key outside a section: {raw!r}"
        current.append((key.strip(), value.strip()))
    return sections


def values(section: list[tuple[str, str]], key: str) -> list[str]:
    return [value for name, value in section if name == key]


def one(section: list[tuple[str, str]], key: str) -> str:
    found = values(section, key)
    assert len(found) == 1, f"{key}= must appear exactly once, found {found}"
    return found[0]


@pytest.fixture(name="service")
def _service() -> list[tuple[str, str]]:
    return parse_unit(UNIT.read_text())["Service"]


def test_unit_is_a_notify_service_with_reload_and_watchdog(
    service: list[tuple[str, str]],
) -> None:
    assert one(service, "Type") == "notify"
    assert one(service, "NotifyAccess") == "main"
    reload_ = one(service, "ExecReload")
    assert re.search(r"\bkill\s+-(HUP|SIGHUP|s HUP)\s+\$MAINPID\b", reload_), reload_
    assert one(service, "Restart") == "on-failure"
    watchdog = one(service, "WatchdogSec")
    assert re.fullmatch(r"\d+s?", watchdog), watchdog
    assert int(watchdog.rstrip("s")) > 0
    exec_start = one(service, "ExecStart").split()
    assert exec_start[0] == INSTALLED_BINARY
    assert exec_start[1] == "serve"


def test_unit_state_credentials_and_limits(service: list[tuple[str, str]]) -> None:
    assert one(service, "StateDirectory") == "gateway"
    # 100,000 connections on one process (a descriptor each) with room to spare.
    assert int(one(service, "LimitNOFILE")) >= 131072
    credentials = values(service, "LoadCredential")
    assert credentials, "secrets come as systemd credentials"
    names = {credential.partition(":")[0] for credential in credentials}
    # Each credential is one the configuration reads from $CREDENTIALS_DIRECTORY.
    readable = {key for _, key in SECRET_KEYS}
    assert names <= readable, names - readable
    assert {"jwt_secret", "bypass_token"} <= names
    assert "REQUIRE_AUTH=true" in values(service, "Environment")


def test_unit_hardening(service: list[tuple[str, str]]) -> None:
    assert one(service, "DynamicUser") == "yes"
    assert one(service, "ProtectSystem") == "strict"
    assert one(service, "NoNewPrivileges") == "yes"
    assert one(service, "PrivateTmp") == "yes"
    families = one(service, "RestrictAddressFamilies").split()
    # AF_UNIX is needed for sd_notify itself; no other family should be allowed.
    assert set(families) == {"AF_UNIX", "AF_INET", "AF_INET6"}, families
    assert "@system-service" in one(service, "SystemCallFilter").split()
    assert one(service, "CapabilityBoundingSet") == ""


@pytest.fixture(name="verifiable")
def _verifiable(tmp_path: Path) -> Path:
    """The unit, with ExecStart= and the LoadCredential= sources pointing at real files."""
    if ANALYZE is None:
        if in_ci():
            pytest.fail("systemd-analyze is required in CI (apt-get install systemd)")
        pytest.skip("systemd-analyze is not installed")
    binary = REPO / ".venv" / "bin" / "gateway"
    assert binary.exists(), f"{binary} (make install)"
    text = UNIT.read_text()
    assert INSTALLED_BINARY in text
    text = text.replace(INSTALLED_BINARY, str(binary))

    def credential(match: re.Match[str]) -> str:
        source = tmp_path / f"credential-{match.group(1)}"
        source.write_text("x" * 48)
        return f"LoadCredential={match.group(1)}:{source}"

    text, count = re.subn(r"(?m)^LoadCredential=([^:\s]+):(\S+)$", credential, text)
    assert count >= 2
    unit = tmp_path / "gateway.service"
    unit.write_text(text)
    return unit


def analyze(*args: str) -> subprocess.CompletedProcess[str]:
    assert ANALYZE is not None
    return subprocess.run([ANALYZE, *args], capture_output=True, text=True, timeout=60, check=False)


def test_systemd_analyze_verify_is_clean(verifiable: Path) -> None:
    result = analyze("verify", str(verifiable))
    assert result.returncode == 0, result.stderr
    assert result.stdout + result.stderr == "", result.stdout + result.stderr


def test_systemd_analyze_verify_would_catch_a_mistake(verifiable: Path) -> None:
    """The check above is sensitive: a misspelt hardening key is reported."""
    verifiable.write_text(verifiable.read_text().replace("ProtectSystem=", "ProtectSytem="))
    result = analyze("verify", str(verifiable))
    assert "ProtectSytem" in result.stdout + result.stderr


def test_systemd_analyze_security_exposure_is_low(verifiable: Path) -> None:
    """``systemd-analyze security`` rates the hardening; 'OK' is an exposure of at most 2.0
    (``--threshold`` counts tenths)."""
    result = analyze("security", "--offline=yes", "--threshold=20", str(verifiable))
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr

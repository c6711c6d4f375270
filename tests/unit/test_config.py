"""Configuration: precedence (defaults < file < env < flags) and errors that name the key."""

from __future__ import annotations

from pathlib import Path

import pytest

from gateway.configfile import load_config, make_config
from gateway.errors import ConfigError


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "gateway.toml"
    path.write_text(text)
    return path


class TestConfig:
    def test_defaults(self, monkeypatch: pytest.MonkeyPatch) -> None:
        """Without a file the server listens on 127.0.0.1:8787 with data in ./var."""
        monkeypatch.delenv("STATE_DIRECTORY", raising=False)
        config = load_config(None, env={})
        assert (config.server.host, config.server.port) == ("127.0.0.1", 8787)
        assert config.store.data_dir == "var"

    def test_state_directory(self, monkeypatch: pytest.MonkeyPatch) -> None:
        """Under systemd the data lives in $STATE_DIRECTORY."""
        monkeypatch.setenv("STATE_DIRECTORY", "/var/lib/gateway:/other")
        assert load_config(None, env={}).store.data_dir == "/var/lib/gateway"

    def test_repo_default_file_loads(self) -> None:
        """The documented gateway.toml is itself a valid configuration."""
        root = Path(__file__).resolve().parents[2]
        config = load_config(root / "gateway.toml", env={})
        assert config.server.port == 8787

    def test_precedence(self, tmp_path: Path) -> None:
        """File < environment < explicit overrides (the command-line flags)."""
        path = write(
            tmp_path, "[server]\nport = 1000\nhost = '0.0.0.0'\n[limits]\ncatchup_window = 3\n"
        )
        env = {"GATEWAY_SERVER_PORT": "2000", "GATEWAY_LIMITS_CATCHUP_WINDOW": "5"}
        config = load_config(path, env=env, overrides={"server": {"port": 3000}})
        assert config.server.port == 3000
        assert config.server.host == "0.0.0.0"
        assert config.limits.catchup_window == 5

    @pytest.mark.parametrize(
        ("text", "env", "needle"),
        [
            ("[server]\nprot = 1\n", {}, "server.prot"),
            ("[servr]\n", {}, "[servr]"),
            ("[server]\nport = 'x'\n", {}, "server.port"),
            ("[server]\nport = 70000\n", {}, "server.port"),
            ("[limits]\nmax_message_bytes = 10\n", {}, "limits.max_message_bytes"),
            ("", {"GATEWAY_SERVER_PORT": "abc"}, "GATEWAY_SERVER_PORT"),
            ("", {"GATEWAY_SERVER_NOPE": "1"}, "GATEWAY_SERVER_NOPE"),
            ("[store]\nbackend = 'mongo'\n", {}, "store.backend"),
            (
                "[store]\nbackend = 'postgres'\ndsn = 'postgresql://x/y'\ncommit_groups = 0\n",
                {},
                "store.commit_groups",
            ),
            ("[server\n", {}, "invalid TOML"),
        ],
    )
    def test_errors_name_the_key(
        self, tmp_path: Path, text: str, env: dict[str, str], needle: str
    ) -> None:
        """Unknown keys, wrong types and bad values are refused with the key's name."""
        with pytest.raises(ConfigError, match=rf"{needle.replace('[', '.').replace(']', '.')}"):
            load_config(write(tmp_path, text), env=env)

    def test_missing_file(self, tmp_path: Path) -> None:
        with pytest.raises(ConfigError, match="not found"):
            load_config(tmp_path / "nope.toml", env={})

    def test_optional_values_from_env(self) -> None:
        """'none' in the environment disables an optional setting."""
        config = load_config(None, env={"GATEWAY_SERVER_PING_INTERVAL": "none"})
        assert config.server.ping_interval is None

    def test_make_config_for_tests(self) -> None:
        config = make_config(data_dir="/srv/x", send_buffer_limit=5)
        assert (config.server.port, config.store.data_dir) == (0, "/srv/x")
        assert config.limits.send_buffer_limit == 5

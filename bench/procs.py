"""Server processes: start them pinned to their CPUs, read their CPU time and memory.

Pinning: the orchestrator (which is also the load generator) calls ``os.sched_setaffinity``
on itself, and every server is started with a ``preexec_fn`` that pins the child before it
execs, so every thread it later starts (SQLite writer and readers included) inherits the mask.
"""

from __future__ import annotations

import asyncio
import os
import re
import resource
import signal
import ssl
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

CLK_TCK = os.sysconf("SC_CLK_TCK")
PAGE = os.sysconf("SC_PAGE_SIZE")
# What a server under test prints once it accepts connections.
_LISTENING = re.compile(rb"listening on (wss?)://\S+:(\d+)\r?\n")


def raise_nofile() -> int:
    """Raise this process's open-file limit to its hard limit; returns the new soft limit."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY:
        hard = 1 << 20
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    return resource.getrlimit(resource.RLIMIT_NOFILE)[0]


def plan_cpus() -> tuple[set[int], set[int], str]:
    """(server CPUs, load-generator CPUs, how) from the CPUs this process may use."""
    cpus = sorted(os.sched_getaffinity(0))
    if len(cpus) >= 2:
        return {cpus[0]}, {cpus[1]}, f"server on CPU {cpus[0]}, load generator on CPU {cpus[1]}"
    return set(cpus), set(cpus), f"only CPU {cpus[0]} available: server and generator share it"


def proc_cpu_seconds(pid: int) -> float:
    """utime + stime of a whole process (all threads), from /proc/<pid>/stat."""
    with open(f"/proc/{pid}/stat", "rb") as f:
        stat = f.read()
    # The command name may contain spaces; fields resume after the closing parenthesis.
    fields = stat[stat.rindex(b")") + 2 :].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def proc_rss_bytes(pid: int) -> int:
    """VmRSS from /proc/<pid>/status."""
    with open(f"/proc/{pid}/status", "rb") as f:
        for line in f:
            if line.startswith(b"VmRSS:"):
                return int(line.split()[1]) * 1024
    raise RuntimeError(f"no VmRSS for {pid}")


def cpu_times() -> dict[int, list[int]]:
    """Per-CPU jiffies from /proc/stat: user nice system idle iowait irq softirq steal."""
    out: dict[int, list[int]] = {}
    with open("/proc/stat", "rb") as f:
        for line in f:
            if line.startswith(b"cpu") and line[3:4].isdigit():
                parts = line.split()
                out[int(parts[0][3:])] = [int(x) for x in parts[1:9]]
    return out


def cpu_busy(before: dict[int, list[int]], after: dict[int, list[int]]) -> dict[str, float]:
    """Per CPU: busy share (incl. softirq) and steal share over the interval."""
    result: dict[str, float] = {}
    for cpu, end in after.items():
        start = before.get(cpu)
        if start is None:
            continue
        delta = [b - a for a, b in zip(start, end, strict=True)]
        total = sum(delta) or 1
        idle = delta[3] + delta[4]
        steal = delta[7]
        result[f"cpu{cpu}_busy"] = (total - idle - steal) / total
        result[f"cpu{cpu}_steal"] = steal / total
        result[f"cpu{cpu}_softirq"] = delta[6] / total
    return result


def self_cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


@dataclass
class Server:
    """A server process under test."""

    name: str
    argv: list[str]
    env: dict[str, str]
    cpus: set[int]
    log_path: Path
    port: int = 0
    quiet_interval: float = 0.2
    cwd: Path = field(default_factory=lambda: Path(__file__).resolve().parents[1])
    proc: subprocess.Popen[bytes] | None = None
    extra: dict[str, object] = field(default_factory=dict)
    # Serving wss://: the context clients connect with (trusts the server's throwaway CA).
    client_tls: ssl.SSLContext | None = None
    restarts: int = 0

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def spawn(self) -> None:
        """Start the process, pinned to ``cpus`` before it execs; output goes to the log."""
        cpus = self.cpus

        def pin() -> None:
            os.sched_setaffinity(0, cpus)
            raise_nofile()

        with open(self.log_path, "wb") as log:
            self.proc = subprocess.Popen(
                self.argv,
                cwd=self.cwd,
                env=self.env,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=log,
                preexec_fn=pin,
            )

    def listening(self) -> int | None:
        """The port from the ``listening on ws://HOST:PORT`` line (``wss://`` when
        ``client_tls`` is set), once it is logged."""
        assert self.proc is not None
        if self.proc.poll() is not None:
            raise RuntimeError(f"{self.name} exited: {self.log_path.read_text()[-2000:]}")
        found = _LISTENING.search(self.log_path.read_bytes())
        if found is None:
            return None
        scheme = b"wss" if self.client_tls is not None else b"ws"
        if found[1] != scheme:
            raise RuntimeError(
                f"{self.name} serves {found[1].decode()}://, not {scheme.decode()}://"
            )
        return int(found[2])

    async def start(self, within: float = 30.0) -> None:
        self.spawn()
        deadline = time.monotonic() + within
        while time.monotonic() < deadline:
            port = self.listening()
            if port is not None:
                self.port = port
                return
            await asyncio.sleep(0.02)
        raise RuntimeError(f"{self.name} did not start within {within} s (see {self.log_path})")

    async def restart(self, within: float = 60.0) -> tuple[float, float]:
        """SIGTERM the process (as a deploy does), wait for it to exit, start it again on
        the same port (and arguments: the same data directory), logging to a new file.
        Returns (seconds until the old process exited, monotonic time the new one listens).
        """
        proc = self.proc
        assert proc is not None
        assert self.port
        started = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        deadline = started + within
        while proc.poll() is None:
            if time.monotonic() > deadline:
                proc.kill()
                proc.wait()
                break
            await asyncio.sleep(0.01)
        exited = time.monotonic() - started
        argv = list(self.argv)
        argv[argv.index("--port") + 1] = str(self.port)
        self.argv = argv
        self.restarts += 1
        self.log_path = self.log_path.with_name(f"{self.log_path.stem}-r{self.restarts}.log")
        self.spawn()
        while time.monotonic() < deadline:
            if self.listening() is not None:
                return exited, time.monotonic()
            await asyncio.sleep(0.005)
        raise RuntimeError(f"{self.name} did not restart within {within} s ({self.log_path})")

    def cpu(self) -> float:
        return proc_cpu_seconds(self.pid)

    def rss(self) -> int:
        return proc_rss_bytes(self.pid)

    async def quiet(self, *, threshold: float = 0.03, within: float = 10.0) -> float:
        """Wait until the server uses under ``threshold`` of a CPU; returns seconds waited."""
        started = time.monotonic()
        last = self.cpu()
        step = self.quiet_interval
        while time.monotonic() - started < within:
            await asyncio.sleep(step)
            now = self.cpu()
            # /proc counts in clock ticks (10 ms): allow one tick on short steps.
            if now - last <= max(threshold * step, 1.0 / CLK_TCK):
                break
            last = now
        return time.monotonic() - started

    async def stop(self) -> None:
        proc = self.proc
        if proc is None or proc.poll() is not None:
            return
        proc.send_signal(signal.SIGTERM)
        for _ in range(150):
            if proc.poll() is not None:
                return
            await asyncio.sleep(0.1)
        proc.kill()
        proc.wait()


def gateway_server(
    data_dir: Path, log_path: Path, cpus: set[int], secret: str, bypass: str
) -> Server:
    env = dict(os.environ)
    env.update(
        {
            "REQUIRE_AUTH": "true",
            "JWT_SECRET": secret,
            "SERVER_BYPASS_TOKEN": bypass,
            # Thousands of connections from one address must not look like an attack, and
            # the per-subject push limit would measure the limiter, not the server.
            "GATEWAY_AUTH_LOCKOUT_FAILURES": "1000000",
            "GATEWAY_AUTH_PUSH_RATE": "0",
            # The baseline sends no protocol pings either (clients ping at the RPC layer).
            "GATEWAY_SERVER_PING_INTERVAL": "none",
            "GATEWAY_SERVER_OPEN_TIMEOUT": "60",
            "GATEWAY_LIMITS_SEND_BUFFER_LIMIT": str(64 * 1024 * 1024),
            "PYTHONUNBUFFERED": "1",
        }
    )
    argv = [
        sys.executable,
        "-m",
        "gateway",
        "serve",
        "--host",
        "127.0.0.1",
        "--port",
        "0",
        "--data-dir",
        str(data_dir),
    ]
    return Server("gateway", argv, env, cpus, log_path)


def baseline_server(
    log_path: Path,
    cpus: set[int],
    *,
    history: int = 0,
    compression: bool = False,
    tls: tuple[Path, Path] | None = None,
) -> Server:
    """The baseline (``python -m bench.baseline``); ``tls``: (cert file, key file) to serve
    wss:// (the caller sets the returned server's ``client_tls``)."""
    env = dict(os.environ)
    env["PYTHONUNBUFFERED"] = "1"
    argv = [sys.executable, "-m", "bench.baseline", "--port", "0", "--history", str(history)]
    if compression:
        argv.append("--deflate")
    if tls is not None:
        argv += ["--tls-cert", str(tls[0]), "--tls-key", str(tls[1])]
    name = "baseline+deflate" if compression else "baseline"
    return Server(name, argv, env, cpus, log_path)

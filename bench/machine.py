"""Where a run ran: the machine, the CPU pinning, and which gateway code was measured."""

from __future__ import annotations

import os
import platform
import subprocess
from dataclasses import dataclass
from importlib.metadata import version
from pathlib import Path


@dataclass(frozen=True, slots=True, kw_only=True)
class Machine:
    cpus_online: int | None
    cpu_model: str
    memory_gib: float
    kernel: str
    python: str
    websockets: str
    uvloop: str
    orjson: str
    pinning: str
    server_cpus: list[int]
    generator_cpus: list[int]
    data_dir_fs: str


@dataclass(frozen=True, slots=True, kw_only=True)
class SourceState:
    """Which gateway code ran: commit, and files changed since (the tree may be dirty)."""

    root: str
    commit: str
    changed: list[str]


def _fs_type(path: Path) -> str:
    best, kind = "", "unknown"
    resolved = str(path.resolve())
    try:
        with open("/proc/mounts") as f:
            for line in f:
                parts = line.split()
                mount, fstype = parts[1], parts[2]
                if resolved.startswith(mount) and len(mount) > len(best):
                    best, kind = mount, fstype
    except OSError:
        pass
    return f"{kind} ({best})"


def source_state(root: Path) -> SourceState:
    """Which gateway code ran: commit, and files changed since (the tree may be dirty)."""

    def git(*args: str) -> str:
        try:
            done = subprocess.run(
                ["git", *args], cwd=root, capture_output=True, text=True, timeout=10, check=False
            )
        except (OSError, subprocess.SubprocessError):
            return ""
        return done.stdout.rstrip("\n")

    changed = [line[3:] for line in git("status", "--porcelain", "gateway").splitlines()]
    commit = git("rev-parse", "--short", "HEAD").strip()
    return SourceState(root=str(root), commit=commit, changed=changed)


def machine(how: str, server_cpus: set[int], gen_cpus: set[int], workdir: Path) -> Machine:
    model = "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    mem_kib = 0
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                mem_kib = int(line.split()[1])
    except OSError:
        pass
    return Machine(
        cpus_online=os.cpu_count(),
        cpu_model=model,
        memory_gib=round(mem_kib / 2**20, 1),
        kernel=platform.release(),
        python=platform.python_version(),
        websockets=version("websockets"),
        uvloop=version("uvloop"),
        orjson=version("orjson"),
        pinning=how,
        server_cpus=sorted(server_cpus),
        generator_cpus=sorted(gen_cpus),
        data_dir_fs=_fs_type(workdir),
    )

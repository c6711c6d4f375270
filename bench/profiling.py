"""Optional py-spy profiles of the gateway during each measurement (``--profile DIR``).

py-spy samples the server from outside (``--nonblocking``, so it does not pause it) and
writes collapsed stacks; :func:`summarise` turns them into the functions with the most
self time and the most inclusive time. Numbers measured while profiling are not benchmark
numbers: the sampler runs on the load generator's CPU.
"""

from __future__ import annotations

import shutil
import signal
import subprocess
import time
from collections import Counter
from pathlib import Path


class Profiler:
    def __init__(self, outdir: Path, rate: int = 500) -> None:
        exe = shutil.which("py-spy") or str(
            Path(__file__).resolve().parents[1] / ".venv/bin/py-spy"
        )
        if not Path(exe).exists():
            raise RuntimeError("py-spy not found: .venv/bin/pip install py-spy")
        self.exe = exe
        self.outdir = outdir
        self.rate = rate
        outdir.mkdir(parents=True, exist_ok=True)
        self._proc: subprocess.Popen[bytes] | None = None
        self._name = ""

    def start(self, name: str, pid: int) -> None:
        self._name = name
        raw = self.outdir / f"{name}.collapsed"
        self._proc = subprocess.Popen(
            [
                self.exe,
                "record",
                "--pid",
                str(pid),
                "--rate",
                str(self.rate),
                "--format",
                "raw",
                "--nonblocking",
                "--threads",
                "-o",
                str(raw),
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        time.sleep(0.3)

    def stop(self) -> Path | None:
        proc = self._proc
        if proc is None:
            return None
        self._proc = None
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        raw = self.outdir / f"{self._name}.collapsed"
        if not raw.exists():
            return None
        summary = self.outdir / f"{self._name}.top.txt"
        summary.write_text(summarise(raw))
        return summary


def _frame_name(frame: str) -> str:
    # "function (path/to/file.py:123)" -> "function (file.py)"
    name, _, where = frame.partition(" (")
    where = where.rstrip(")")
    file = where.rsplit("/", 1)[-1].split(":", 1)[0]
    return f"{name} ({file})" if file else name


def summarise(raw: Path, top: int = 40) -> str:
    self_time: Counter[str] = Counter()
    inclusive: Counter[str] = Counter()
    total = 0
    for line in raw.read_text().splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not stack or not count_text.isdigit():
            continue
        count = int(count_text)
        frames = [_frame_name(f) for f in stack.split(";") if f]
        # Idle threads (the SQLite threads waiting on their queue) are not CPU.
        if not frames or any(f.startswith(("_worker (thread", "get (queue")) for f in frames[-2:]):
            continue
        total += count
        self_time[frames[-1]] += count
        for name in set(frames):
            inclusive[name] += count
    lines = [f"samples: {total}", "", "self time:"]
    for name, count in self_time.most_common(top):
        lines.append(f"  {100 * count / max(total, 1):5.1f}%  {name}")
    lines += ["", "inclusive time:"]
    for name, count in inclusive.most_common(top):
        lines.append(f"  {100 * count / max(total, 1):5.1f}%  {name}")
    return "\n".join(lines) + "\n"

"""The machine a timing runs on: keeping it quiet (Pauser), measuring how quiet it was (LoadMeter), and
what to record about the run (its command line, package versions)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


class Pauser:
    """SIGSTOPs other processes (e.g. a background job sharing the cores) only while an engine is timed.

    Always resumes them: on leaving the `with`, at exit, and on SIGINT/SIGTERM.
    """

    def __init__(self, specs: list[str]):
        self.specs = list(specs)
        self.stopped: list[int] = []
        if self.specs:
            import atexit
            atexit.register(self.resume)
            for sig in (signal.SIGINT, signal.SIGTERM):
                prev = signal.getsignal(sig)

                def handler(signum, frame, prev=prev):
                    self.resume()
                    if callable(prev):
                        prev(signum, frame)
                    raise SystemExit(128 + signum)
                signal.signal(sig, handler)

    def pids(self) -> list[int]:
        """Resolved at each pause: a pid file may name a restarted process by then."""
        out = []
        for s in self.specs:
            p = Path(s)
            try:
                pid = int(p.read_text().split()[0]) if p.is_file() else int(s)
            except (ValueError, IndexError, OSError):
                continue
            if pid != os.getpid() and Path(f"/proc/{pid}").exists():
                out.append(pid)
        return out

    def pause(self) -> None:
        for pid in self.pids():
            try:
                os.kill(pid, signal.SIGSTOP)
                self.stopped.append(pid)
            except ProcessLookupError:
                pass
        if self.stopped:
            time.sleep(0.2)   # let the cores go quiet

    def resume(self) -> None:
        while self.stopped:
            try:
                os.kill(self.stopped.pop(), signal.SIGCONT)
            except ProcessLookupError:
                pass

    def __enter__(self):
        self.pause()
        return self

    def __exit__(self, *exc):
        self.resume()


def _busy_jiffies() -> int:
    try:
        f = Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]
    except OSError:
        return 0
    user, nice, system, _idle, _iowait, irq, softirq, steal = (int(x) for x in f[:8])
    return user + nice + system + irq + softirq + steal


def _tree_jiffies(root: int) -> int:
    """CPU time (user+system, in clock ticks) of `root` and all its descendants now alive."""
    stats = {}
    for d in Path("/proc").iterdir():
        if d.name.isdigit():
            try:
                raw = (d / "stat").read_text()
            except OSError:
                continue
            rest = raw[raw.rindex(")") + 2:].split()
            stats[int(d.name)] = (int(rest[1]), int(rest[11]) + int(rest[12]))   # ppid, utime+stime
    kids: dict[int, list[int]] = {}
    for pid, (ppid, _) in stats.items():
        kids.setdefault(ppid, []).append(pid)
    total, todo = 0, [root]
    while todo:
        pid = todo.pop()
        total += stats.get(pid, (0, 0))[1]
        todo += kids.get(pid, [])
    return total


class LoadMeter:
    """Share of the machine's CPU that processes *outside* this benchmark used during a timed window.

    Linux only (reads /proc); elsewhere it reports nothing. A share above a few percent means the figure was
    measured on a busy machine.
    """

    def __init__(self, root: int | None = None):
        self.root = root or os.getpid()
        self.ok = Path("/proc/stat").exists()

    def start(self):
        if self.ok:
            self.t0, self.b0, self.o0 = time.perf_counter(), _busy_jiffies(), _tree_jiffies(self.root)
        return self

    def others(self) -> float | None:
        if not self.ok:
            return None
        wall = time.perf_counter() - self.t0
        hz = os.sysconf("SC_CLK_TCK")
        other = (_busy_jiffies() - self.b0) - (_tree_jiffies(self.root) - self.o0)
        return max(0.0, other / hz / (wall * (os.cpu_count() or 1)))




def command_line(argv: list[str]) -> str:
    """The benchmark's own arguments, without --pause (which names this machine's processes) and the output files."""
    drop = ("--pause", "--results-md", "--json-out")
    out, skip = [], False
    for a in argv:
        if skip:
            skip = False
        elif a in drop:
            skip = True
        elif not a.startswith(tuple(d + "=" for d in drop)):
            out.append(a)
    return " ".join(["python benchmarks/simulate.py", *out])


def dist_version(name: str, python: str | None = None) -> str:
    if python:
        code = f"import importlib.metadata as m\ntry: print(m.version({name!r}))\nexcept Exception: print('-')"
        try:
            return subprocess.run([python, "-c", code], capture_output=True, text=True, timeout=60).stdout.strip() or "-"
        except (OSError, subprocess.SubprocessError):
            return "-"
    import importlib.metadata as m
    try:
        return m.version(name)
    except m.PackageNotFoundError:
        return "-"

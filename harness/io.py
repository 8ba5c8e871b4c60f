"""Checks that run before any work: devices, output folders, and making user text safe to print.

Each turns an environment problem into a HarnessError (one line, exit 2) at the start of a command,
instead of a traceback from torch or the file system after minutes of evaluation.
"""

from __future__ import annotations

import os
import tempfile
import unicodedata
from pathlib import Path

from harness.errors import HarnessError

# Categories that would break "one line" or the terminal: controls (\n, \r, ESC...), line/paragraph
# separators (str.splitlines splits on them) and lone surrogates (not encodable as UTF-8).
_UNPRINTABLE = {"Cc", "Zl", "Zp", "Cs"}


def one_line(text: str) -> str:
    """`text` with every line-breaking, control or unencodable character written as a Python escape."""
    if text.isprintable():
        return text
    return "".join(ascii(ch)[1:-1] if unicodedata.category(ch) in _UNPRINTABLE else ch for ch in text)


def env_int(name: str, default: int) -> int:
    """A positive integer from the environment variable `name` (`default` when unset or empty)."""
    raw = os.environ.get(name, "")
    if not raw.strip():
        return default
    try:
        value = int(raw)
    except ValueError:
        value = 0
    if value < 1:
        raise HarnessError(f"{name}={raw!r} is not a positive integer — set it to e.g. {default}, or unset it")
    return value


def resolve_device(name: str):
    """`auto`, `cpu`, `cuda`, `cuda:1`, `mps`... as a torch.device that exists on this machine."""
    import torch

    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(name)
    except (RuntimeError, ValueError):
        raise HarnessError(f"--device {name!r} is not a torch device — use auto, cpu, cuda, cuda:N or mps") from None
    if dev.type == "cpu":
        return dev
    backend = getattr(torch.backends, dev.type, None) if dev.type == "mps" else getattr(torch, dev.type, None)
    available = getattr(backend, "is_available", None)
    if available is None or not available():
        raise HarnessError(f"--device {name!r}: this machine has no usable {dev.type} device — use auto or cpu")
    count = getattr(backend, "device_count", None)
    if dev.index is not None and count is not None and dev.index >= count():
        raise HarnessError(f"--device {name!r}: this machine has {count()} {dev.type} device(s) — use an index below that")
    return dev


def writable_dir(path: str | os.PathLike, what: str, fix: str = "pass a writable folder",
                 create: bool = False) -> Path:
    """Prove that files can be written in folder `path`, or in the folder that would hold it.

    Without `create`, a missing folder is left for the writer to make, so a mistyped path costs no stray
    folder. A probe file, not os.access: access() answers for root as if every folder were writable, and
    says nothing about read-only mounts.
    """
    p = Path(path)
    if create:
        try:
            p.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise HarnessError(f"{p}: cannot create the {what} folder ({e.strerror}) — {fix}") from None
    here = p
    while not here.exists() and here != here.parent:
        here = here.parent
    if not here.is_dir():
        raise HarnessError(f"{p}: the {what} folder{'' if here == p else f' would be inside {here}, which'} "
                           f"is a file — {fix}")
    try:
        fd, probe = tempfile.mkstemp(dir=here, prefix=".harness-write-check.")
        os.close(fd)
        os.unlink(probe)
    except OSError as e:
        raise HarnessError(f"{here}: cannot write to the {what} folder ({e.strerror}) — {fix}") from None
    return p


def writable_file(path: str | os.PathLike, what: str) -> Path:
    """The folder of an output file is writable and the file's name is not taken by a folder."""
    p = Path(path)
    if p.is_dir():
        raise HarnessError(f"{p}: the {what} path is a folder — pass a file name")
    writable_dir(p.parent, what)
    return p

"""Files and the terminal, for every stage: hashing, atomic writes, cached npz steps, the cache root, the
progress bar, output-folder checks and making user text safe to print.

The checks turn an environment problem into a HarnessError (one line, exit 2) at the start of a command,
instead of a traceback from the file system after minutes of evaluation.
"""

from __future__ import annotations

import hashlib
import os
import secrets
import sys
import tempfile
import unicodedata
from collections.abc import Callable
from pathlib import Path
from typing import IO, Any

import numpy as np
from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)

from harness.errors import HarnessError

# Categories that would break "one line" or the terminal: controls (\n, \r, ESC, the C1 range with its
# one-byte CSI...), line/paragraph separators (str.splitlines splits on them) and lone surrogates (not
# encodable as UTF-8).
_UNPRINTABLE = {"Cc", "Zl", "Zp", "Cs"}
# Bidirectional overrides and isolates: printable, but they reorder the text after them on screen, so a
# name could show as another name ("Trojan source").
BIDI_CONTROLS = frozenset("\u061c\u200e\u200f\u202a\u202b\u202c\u202d\u202e\u2066\u2067\u2068\u2069")


def unsafe_char(ch: str) -> bool:
    """A character that must never reach a terminal raw: it breaks the line, drives the terminal
    (an ESC or CSI sequence: recolour, clear, set the title, write the clipboard) or reorders the text."""
    return unicodedata.category(ch) in _UNPRINTABLE or ch in BIDI_CONTROLS


def escape_unsafe(text: str, keep: str = "") -> str:
    """`text` with every unsafe character but those in `keep` written as a Python escape (ESC -> \\x1b)."""
    if text.isprintable():   # fast path: no Cc, Cf, Zl, Zp or Cs character at all
        return text
    return "".join(ascii(ch)[1:-1] if ch not in keep and unsafe_char(ch) else ch for ch in text)


def one_line(text: str) -> str:
    """`text` with every line-breaking, control, reordering or unencodable character written as a Python
    escape: one visible line whatever the text holds."""
    return escape_unsafe(text)


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


def batch_size() -> int:
    """Contexts per forward pass for the subject model (HARNESS_BATCH, read when used, not at import)."""
    return env_int("HARNESS_BATCH", 32)


def progress() -> Progress:
    # On stderr: progress is not a command's product, so stdout (a table, JSON) can be piped or parsed whole.
    return Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                    TimeRemainingColumn(), transient=False, console=Console(stderr=True))


def cache_root() -> Path:
    env = os.environ.get("HARNESS_CACHE")
    root = Path(env) if env else Path.home() / ".cache" / "harness"
    if root.exists() and not root.is_dir():
        where = f"HARNESS_CACHE={env}" if env else str(root)
        raise HarnessError(f"{where} is a file, not a folder — point HARNESS_CACHE at a folder (or unset it)")
    return root


def sha256_file(path: str | os.PathLike) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def atomic_write(path: Path, write: Callable[[IO[bytes]], Any]) -> Path:
    """Call ``write(binary_file)`` on a temp file next to ``path``, then rename it over ``path``.

    A crash never leaves half a file. The temp file is created with mode 0666 for the kernel to apply
    the umask, as any tool's output gets (mkstemp would make it 0600, unreadable to a web server).
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.parent / f".{path.name}.{secrets.token_hex(8)}.tmp"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise
    return path


def atomic_write_text(path: Path, text: str) -> Path:
    return atomic_write(path, lambda f: f.write(text.encode("utf-8")))


def save_npz(path: Path, **arrays: Any) -> None:
    atomic_write(path, lambda f: np.savez_compressed(f, **arrays))


def load_npz(path: Path) -> dict[str, np.ndarray]:
    with np.load(path) as z:
        return {k: z[k] for k in z.files}


def load_cached(path: Path, load: Callable[[Path], Any] = load_npz, keys: tuple[str, ...] = ()) -> Any:
    """A cached step's content, or None when it must be (re)computed: absent, or damaged.

    Reading every array checks each member's zip CRC-32, so a truncated or corrupted file (a full disk,
    a partial copy) is caught here, reported once, and recomputed instead of failing every later run.
    """
    if not path.is_file():
        return None
    try:
        data = load(path)
        missing = [k for k in keys if k not in data]
        if missing:
            raise KeyError(f"lacks {', '.join(missing)}")
    except Exception as e:  # any unreadable cache file is recomputed; KeyboardInterrupt is not an Exception
        reason = one_line(str(e) or type(e).__name__)
        print(f"warning: {one_line(str(path))}: cached step is damaged ({reason}); recomputing it", file=sys.stderr)
        return None
    return data

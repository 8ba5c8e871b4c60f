"""Tables for the terminal and for pipes that never cut an identifier.

One rule for every table the CLI prints (`--format auto`, the default):

- output is not a terminal (piped, redirected): a Markdown table, every cell whole, whatever the width;
- a terminal wide enough for the identifier columns: a rich table, identifiers on one line and whole,
  the other columns wrapped (never cut to "…");
- a terminal too narrow even for that: one block per row, its identifiers as the block's first line.

`--format json` is for scripts: the rows as a JSON list of objects (`json_text`).

It is also the one place text leaves the program for a terminal. Method names, descriptions, explanations
and result fields are whatever a submitter or a results folder holds, and ESC, CSI, OSC (set the window
title, write the clipboard), CR, NUL or U+2028 in them would drive or break the terminal of whoever runs
the harness. `SafeConsole` (every rich print) and `write`/`json_text` (plain stdout) write each such
character as a visible escape; the newlines the program itself lays out pass.
"""

from __future__ import annotations

import re
import sys
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import IO, Any

from rich.cells import cell_len
from rich.console import Console
from rich.padding import Padding
from rich.segment import Segment
from rich.table import Table
from rich.text import Text
from tabulate import tabulate

from harness.io import escape_unsafe


class SafeConsole(Console):
    """A rich Console that cannot be driven by the text it prints.

    Escaping happens on the rendered segments, after rich has laid out tables and wrapped lines, so it
    holds for every renderable (tables, titles, captions, Text, str) without each caller remembering it.
    Rich's own styles are applied after this step and its control segments (cursor moves of a live
    progress bar) are left alone; only the characters of the text itself are escaped. A newline inside
    a text is kept (rich has already broken the line there); identifiers meant to be one line are passed
    through `harness.io.one_line` where they are formatted.
    """

    def _render_buffer(self, buffer: Iterable[Segment]) -> str:
        return super()._render_buffer(
            seg if seg.control else Segment(escape_unsafe(seg.text, keep="\n"), seg.style, seg.control)
            for seg in buffer)


def console(*, stderr: bool = False, **kw: Any) -> SafeConsole:
    """A SafeConsole without markup or emoji codes: user text like "[/b]" or ":x:" prints as typed."""
    return SafeConsole(stderr=stderr, **{"markup": False, "emoji": False, **kw})


def write(text: str, file: IO[str] | None = None) -> None:
    """Plain text (Markdown, CSV, HTML) to stdout: every unsafe character escaped, layout newlines and tabs kept."""
    (file or sys.stdout).write(escape_unsafe(text, keep="\n\t"))


_JSON_UNSAFE = re.compile(r"[\x7f-\x9f\u061c\u200e\u200f\u2028\u2029\u202a-\u202e\u2066-\u2069\ud800-\udfff]")


def json_text(obj: Any) -> str:
    """`obj` as indented JSON that is safe on a terminal and still decodes to `obj`.

    json escapes U+0000-U+001F itself; DEL, the C1 controls (U+0080-U+009F, among them the one-byte
    CSI), the line separators, bidirectional controls and lone surrogates it writes raw. They only ever
    occur inside strings, where \\uXXXX is the same character to a JSON reader.
    """
    import json

    text = json.dumps(obj, indent=1, ensure_ascii=False, allow_nan=False)
    return _JSON_UNSAFE.sub(lambda m: f"\\u{ord(m.group()):04x}", text)


# Below this many characters per non-identifier column a rich table is mostly wrapped fragments.
_MIN_OTHER = 12


@dataclass(frozen=True)
class Column:
    name: str
    key: bool = False      # an identifier (task id, method, hash): printed whole, on one line
    numeric: bool = False  # right-justified in the rich table


# Identifiers are user text: "a|b" or "[x](url)" in a method name is text, not table structure or a link.
_MD_SPECIAL = str.maketrans({c: "\\" + c for c in "\\`*[]<>|"})


def markdown(columns: Sequence[Column], rows: Sequence[Sequence[str]]) -> str:
    """A GitHub Markdown table, every cell whole; identifier cells escaped, every `|` escaped."""
    def cell(c: Column, s: str) -> str:
        s = " ".join(str(s).split())
        return s.translate(_MD_SPECIAL) if c.key else s.replace("|", "\\|")

    body = [[cell(c, x) for c, x in zip(columns, r, strict=True)] for r in rows]
    return tabulate(body, headers=[c.name for c in columns], tablefmt="github", disable_numparse=True)


def fits(console: Console, columns: Sequence[Column], rows: Sequence[Sequence[str]]) -> bool:
    """Whether a rich table at this width can hold every identifier whole and leave room for the rest."""
    def widest(i: int) -> int:
        return max([cell_len(columns[i].name) if columns[i].key else 0, *(cell_len(str(r[i])) for r in rows)])

    need = len(columns) + 1   # borders
    for i, c in enumerate(columns):
        need += 2 + (widest(i) if c.key else min(widest(i), _MIN_OTHER))
    return need <= console.width


def rich_table(columns: Sequence[Column], rows: Sequence[Sequence[str]], *, title: str | None = None,
               caption: str | None = None) -> Table:
    t = Table(title=title, caption=caption)
    for i, c in enumerate(columns):
        whole = max([cell_len(c.name), *(cell_len(str(r[i])) for r in rows)]) if c.key else None
        t.add_column(c.name, justify="right" if c.numeric else "left", no_wrap=c.key, overflow="fold",
                     min_width=whole)
    for r in rows:
        t.add_row(*(Text(str(x)) for x in r))
    return t


def records(console: Console, columns: Sequence[Column], rows: Sequence[Sequence[str]]) -> None:
    """One block per row: the identifiers on the first line, then `name  value` lines (values wrap, indented)."""
    keys = [i for i, c in enumerate(columns) if c.key] or [0]
    for r in rows:
        console.print(Text("  ".join(str(r[i]) for i in keys), style="bold"), soft_wrap=True)
        grid = Table.grid(padding=(0, 2))
        grid.add_column(no_wrap=True)
        grid.add_column(overflow="fold")
        for i, c in enumerate(columns):
            if i not in keys:
                grid.add_row(Text(c.name), Text(str(r[i])))
        console.print(Padding(grid, (0, 0, 0, 2), expand=False))
        console.print()


def print_table(console: Console, columns: Sequence[Column], rows: Sequence[Sequence[str]], *,
                title: str | None = None, caption: str | None = None, fmt: str = "auto") -> None:
    """Print rows by the module's rule; `fmt` "md" or "rich" forces that layout."""
    if fmt == "md" or (fmt == "auto" and not console.is_terminal):
        # Piped: plain text a script or a Markdown file can take as it is; the title is a line above it.
        text = markdown(columns, rows)
        if fmt == "auto" and title:
            text = f"{title}\n\n{text}"
        if fmt == "auto" and caption:
            text = f"{text}\n\n{caption}"
        if fmt == "auto":
            text += "\n"   # a blank line before whatever follows
        console.print(Text(text), soft_wrap=True)   # soft_wrap: never folded at the console width
        return
    if fits(console, columns, rows):
        console.print(rich_table(columns, rows, title=title, caption=caption))
        return
    if title:
        console.print(Text(title, style="bold"), soft_wrap=True)
        console.print()
    records(console, columns, rows)
    if caption:
        console.print(Text(caption, style="dim"))

"""Repository hygiene: scripts, benchmarks and tests import the installed `harness` package (`pip install -e .`)
and never edit the import path to reach the repository's own folders."""

from __future__ import annotations

import os
import re
import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
# Written so that this file does not match itself.
PATH_INSERT = re.compile(r"\bsys\s*\.\s*path\s*\.\s*insert\b")
SKIP_DIRS = {".git", "__pycache__", "node_modules"}


def python_files(root: Path = ROOT) -> list[Path]:
    """The repository's *.py files that git tracks or would track (not ignored: new files count before their
    commit); without git (an unpacked archive), every *.py file below `root` outside .git and the virtual
    environments (.venv, .venv-*)."""
    try:
        cmd = ["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard", "--", "*.py"]
        out = subprocess.run(cmd, cwd=root, capture_output=True, text=True, check=True, timeout=60).stdout
        if out:
            return [root / p for p in out.split("\0") if p and not p.startswith(".venv")]
    except (OSError, subprocess.SubprocessError):
        pass
    files = []
    for folder, dirs, names in os.walk(root):
        dirs[:] = [d for d in dirs if d not in SKIP_DIRS and not d.startswith(".venv")]
        files += [Path(folder) / n for n in names if n.endswith(".py")]
    return files


def path_inserts(files: list[Path], root: Path = ROOT) -> list[str]:
    """'path:line: text' of every line of `files` that inserts into sys.path."""
    hits = []
    for f in files:
        if not f.is_file():   # tracked but deleted in the working tree
            continue
        for n, line in enumerate(f.read_text(encoding="utf-8", errors="replace").splitlines(), 1):
            if PATH_INSERT.search(line):
                hits.append(f"{f.relative_to(root)}:{n}: {line.strip()}")
    return hits


def test_no_python_file_inserts_into_sys_path():
    files = python_files()
    assert any(f.name == "simulate.py" for f in files), "found none of the repository's Python files"
    hits = path_inserts(files)
    assert not hits, ("these lines edit sys.path; import the installed package instead "
                      "(`pip install -e .`; a script's own folder is already first on sys.path):\n" + "\n".join(hits))


def test_the_check_finds_an_insert_and_the_fallback_skips_virtual_environments(tmp_path):
    insert = "sys.path" + ".insert"   # split, so that this file does not match itself
    (tmp_path / "tool.py").write_text(f"import sys\n\n{insert}(0, '..')\n")
    (tmp_path / "ok.py").write_text("import sys\n\nprint(sys.path)\n")
    for venv in (".venv", ".venv-vllm"):
        (tmp_path / venv).mkdir()
        (tmp_path / venv / "site.py").write_text(f"import sys\n{insert}(0, '.')\n")
    # tmp_path is not a git work tree (or lies in one that tracks none of these files): the walk finds them.
    files = python_files(tmp_path)
    assert sorted(f.relative_to(tmp_path).as_posix() for f in files) == ["ok.py", "tool.py"]
    assert path_inserts(files, tmp_path) == [f"tool.py:3: {insert}(0, '..')"]

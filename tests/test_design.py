"""docs/DESIGN.md stays true to the code: its interfaces block is generated, and every module is placed."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_interfaces_block_is_current():
    r = subprocess.run([sys.executable, str(ROOT / "scripts" / "design_interfaces.py"), "--check"],
                       capture_output=True, text=True)
    assert r.returncode == 0, r.stderr


def _layout_entries() -> dict[str, str]:
    """The layout tree of docs/DESIGN.md: each top-level entry ("cli.py", "score/") with its text, continuation
    lines included."""
    doc = (ROOT / "docs" / "DESIGN.md").read_text()
    tree = doc[doc.index("```\nharness/\n") + len("```\nharness/\n"):]
    tree = tree[:tree.index("```")]
    entries: dict[str, str] = {}
    name = ""
    for line in tree.splitlines():
        m = re.match(r"  (\S+)\s", line + " ")
        if m:
            name = m.group(1).rstrip(",")
            entries[name] = line
        else:
            entries[name] += " " + line
    return entries


def test_every_module_is_in_the_layout():
    """Each module is named in its own folder's entry of the layout tree (a name elsewhere does not count)."""
    entries = _layout_entries()
    missing = []
    for path in sorted((ROOT / "harness").rglob("*.py")):
        if path.name == "__init__.py":
            continue
        parts = path.relative_to(ROOT / "harness").parts
        # A top-level module may share an entry ("errors.py, io.py"); a folder's modules sit in its entry.
        text = (" ".join(v for k, v in entries.items() if not k.endswith("/")) if len(parts) == 1
                else entries.get(f"{parts[0]}/", ""))
        if not re.search(rf"(?<![\w.]){re.escape(path.stem)}(?=[./])", text):
            missing.append(path.relative_to(ROOT).as_posix())
    assert not missing, f"docs/DESIGN.md's layout tree does not place {missing}"


def test_nothing_in_the_product_imports_the_test_stand_ins():
    users = [p.relative_to(ROOT).as_posix() for p in (ROOT / "harness").rglob("*.py")
             if "harness.testing" in p.read_text() and "testing" not in p.parts]
    # The CLI's make-tiny-task verb builds stand-ins on request; nothing else may reach them.
    assert users == ["harness/cli.py"], users


# The package's layers, lowest first: a module imports only its own layer and the ones before it. Shared
# ground first, then the stages in the order an eval runs them (models before the task, whose inputs load
# them), then what drives the stages.
LAYERS = ["errors", "names", "io", "terminal", "hub", "result", "environment", "model", "task", "data", "simulate", "score",
          "report", "oracle", "simulator_check", "pipeline", "baselines", "build", "testing", "api", "cli"]


def _imports():
    import ast

    for path in sorted((ROOT / "harness").rglob("*.py")):
        mod = ".".join(path.relative_to(ROOT).with_suffix("").parts).removesuffix(".__init__")
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                names = [node.module]
            elif isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            else:
                continue
            for name in names:
                if name.startswith("harness."):
                    yield mod, name


def _layer(module: str) -> int | None:
    parts = module.split(".")
    return LAYERS.index(parts[1]) if len(parts) > 1 and parts[1] in LAYERS else None


def test_imports_point_down_the_layers():
    assert {p.parent.name if p.parent.name != "harness" else p.stem for p in (ROOT / "harness").rglob("*.py")
            if p.name != "__init__.py"} <= set(LAYERS), "a new top-level module or folder needs a place in LAYERS"
    upward = {(src, dst) for src, dst in _imports()
              if (a := _layer(src)) is not None and (b := _layer(dst)) is not None and b > a}
    assert upward == set(), "imports that point up the layers (docs/DESIGN.md)"


def test_no_function_in_the_package_is_over_100_lines():
    import ast

    long = [f"{p.relative_to(ROOT).as_posix()}:{n.name} ({n.end_lineno - n.lineno + 1} lines)"
            for p in sorted((ROOT / "harness").rglob("*.py"))
            for n in ast.walk(ast.parse(p.read_text()))
            if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef)) and n.end_lineno - n.lineno + 1 > 100]
    assert long == [], "split these by the steps they take"

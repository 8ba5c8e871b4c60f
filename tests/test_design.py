"""docs/DESIGN.md stays true to the code: its interfaces block is generated, and every module is placed."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_interfaces_block_is_current():
    r = subprocess.run([sys.executable, str(ROOT / "scripts" / "design_interfaces.py"), "--check"],
                       capture_output=True, text=True)
    assert r.returncode == 0, r.stderr


def test_every_module_is_in_the_layout():
    doc = (ROOT / "docs" / "DESIGN.md").read_text()
    missing = []
    for path in sorted((ROOT / "harness").rglob("*.py")):
        if path.name == "__init__.py":
            continue
        rel = path.relative_to(ROOT).as_posix()
        folder_listing = path.stem in doc and f"{path.parent.name}/" in doc
        if rel not in doc and not folder_listing:
            missing.append(rel)
    assert not missing, f"docs/DESIGN.md does not place {missing}"


def test_nothing_in_the_product_imports_the_test_stand_ins():
    users = [p.relative_to(ROOT).as_posix() for p in (ROOT / "harness").rglob("*.py")
             if "harness.testing" in p.read_text() and "testing" not in p.parts]
    # The CLI's make-tiny-task verb builds stand-ins on request; nothing else may reach them.
    assert users == ["harness/cli.py"], users

"""requirements.lock agrees with pyproject.toml: every dependency and every `test` extra has exactly one pinned,
hashed entry in the lock whose version lies in pyproject's range. pyproject keeps ranges (what harness works
with); the lock is the one environment that scripts/install.sh and CI build (`bash scripts/lock.sh` refreshes it).
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import tomllib
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from packaging.version import Version

ROOT = Path(__file__).resolve().parents[1]
LOCK = ROOT / "requirements.lock"
_PIN = re.compile(r"^([A-Za-z0-9][A-Za-z0-9._-]*)==([^\s\\;]+)")


def parse_lock(text: str) -> dict[str, tuple[Version, int]]:
    """{canonical name: (pinned version, number of hashes)} of a pip-compile --generate-hashes file."""
    out: dict[str, tuple[Version, int]] = {}
    current = None
    for line in text.splitlines():
        m = _PIN.match(line)
        if m:
            name = canonicalize_name(m.group(1))
            if name in out:
                raise ValueError(f"{name} is pinned twice")
            out[name] = (Version(m.group(2)), 0)
            current = name
        elif line[:1].isalnum():
            raise ValueError(f"unpinned lock line: {line!r}")
        elif current and line.strip().startswith("--hash=sha256:"):
            version, n = out[current]
            out[current] = (version, n + 1)
    return out


def pyproject_requirements(pyproject: dict) -> list[Requirement]:
    project = pyproject["project"]
    return [Requirement(r) for r in [*project["dependencies"], *project["optional-dependencies"]["test"]]]


def disagreements(reqs: list[Requirement], lock: dict[str, tuple[Version, int]]) -> list[str]:
    problems = []
    for req in reqs:
        name = canonicalize_name(req.name)
        if name not in lock:
            problems.append(f"{req}: not in requirements.lock")
            continue
        version, _ = lock[name]
        # A local label (torch 2.13.0+cpu) is the build, not the release: the range applies to the release.
        if not req.specifier.contains(version, prereleases=True):
            problems.append(f"{req}: the lock pins {version}, outside the range")
    problems += [f"{name}=={v}: no --hash in requirements.lock" for name, (v, n) in lock.items() if n == 0]
    return problems


def test_lock_pins_every_pyproject_requirement_within_its_range():
    lock = parse_lock(LOCK.read_text())
    reqs = pyproject_requirements(tomllib.loads((ROOT / "pyproject.toml").read_text()))
    assert disagreements(reqs, lock) == [], "run `bash scripts/lock.sh` and commit requirements.lock"
    # The CPU build from the local disk, never a CUDA build from the index (scripts/lock.sh holds it there).
    assert str(lock["torch"][0]) == "2.13.0+cpu"


def test_a_disagreeing_lock_is_reported():
    lock = parse_lock("transformers==5.25.0 \\\n    --hash=sha256:ab\nnumpy==1.2.0\n")
    reqs = [Requirement("transformers>=5.0,<6"), Requirement("numpy>=1.26"), Requirement("rich>=13")]
    assert disagreements(reqs, lock) == [
        "numpy>=1.26: the lock pins 1.2.0, outside the range",
        "rich>=13: not in requirements.lock",
        "numpy==1.2.0: no --hash in requirements.lock",
    ]
    with pytest.raises(ValueError, match="unpinned"):
        parse_lock("rich>=13\n")


def test_install_and_ci_install_from_the_lock():
    install = (ROOT / "scripts" / "install.sh").read_text()
    assert "--require-hashes --no-deps -r requirements.lock" in install
    assert "bash scripts/install.sh" in (ROOT / ".ci" / "run").read_text()

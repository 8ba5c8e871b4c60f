"""The cascade an eval asks for: its settings, their `--cascade` / `[simulator] cascade` syntax, and the rule that
a task fixing its cascade runs that one. How a cascade runs is `harness/simulate/cascade.py`; the spec checks
its fixed cascade string with `parse_cascade` when a task loads."""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass

from harness.errors import HarnessError

RANKERS = ("lexical", "embedding", "combined", "fire-rate")
CALIBRATIONS = ("weighted", "fill")
DEFAULT_SAMPLE = 0.02
DEFAULT_RANKER = "lexical"
DEFAULT_CALIBRATION = "weighted"


@dataclass(frozen=True)
class CascadeSettings:
    top: int                          # M: latents per context sent to the simulator, best first-stage score first
    sample: float = DEFAULT_SAMPLE    # probability that each other pair is sent too (the error estimate's sample)
    seed: int = 0                     # seeds the random sample
    ranker: str = DEFAULT_RANKER
    calibration: str = DEFAULT_CALIBRATION   # weighted | fill: how unselected calibration pairs enter F_pred

    def __post_init__(self) -> None:
        if isinstance(self.top, bool) or not isinstance(self.top, int) or self.top < 0:
            raise HarnessError(f"cascade: top must be a non-negative integer, got {self.top!r}")
        if not (isinstance(self.sample, (int, float)) and 0.0 <= float(self.sample) <= 1.0):
            raise HarnessError(f"cascade: sample must be a rate in [0, 1], got {self.sample!r}")
        if isinstance(self.seed, bool) or not isinstance(self.seed, int) or self.seed < 0:
            raise HarnessError(f"cascade: seed must be a non-negative integer, got {self.seed!r}")
        if self.ranker not in RANKERS:
            raise HarnessError(f"cascade: ranker must be one of {', '.join(RANKERS)}, got {self.ranker!r}")
        if self.calibration not in CALIBRATIONS:
            raise HarnessError(f"cascade: calibration must be one of {', '.join(CALIBRATIONS)}, "
                               f"got {self.calibration!r}")

    def to_dict(self) -> dict:
        return asdict(self)

    def tag(self) -> str:
        """A file-name fragment that tells cascade results apart from each other and from exhaustive ones."""
        fill = "-fill" if self.calibration == "fill" else ""
        return f"cascade-{self.ranker}-m{self.top}-s{self.sample:g}-r{self.seed}{fill}"


def parse_cascade(text: str) -> CascadeSettings:
    """`M` or `top=M[,sample=R][,seed=S][,ranker=NAME][,calibration=weighted|fill]`, e.g. `16` or
    `top=16,sample=0.02,ranker=lexical`."""
    text = (text or "").strip()
    if re.fullmatch(r"\d+", text):
        return CascadeSettings(top=int(text))
    fields: dict[str, str] = {}
    for part in text.split(","):
        key, sep, value = part.partition("=")
        key, value = key.strip(), value.strip()
        if not sep or key not in ("top", "sample", "seed", "ranker", "calibration") or not value or key in fields:
            raise HarnessError(f"--cascade {text!r}: expected M or top=M[,sample=R][,seed=S][,ranker="
                               f"{'|'.join(RANKERS)}][,calibration={'|'.join(CALIBRATIONS)}]")
        fields[key] = value
    if "top" not in fields:
        raise HarnessError(f"--cascade {text!r}: top=M is required")
    try:
        return CascadeSettings(top=int(fields["top"]), sample=float(fields.get("sample", DEFAULT_SAMPLE)),
                               seed=int(fields.get("seed", 0)), ranker=fields.get("ranker", DEFAULT_RANKER),
                               calibration=fields.get("calibration", DEFAULT_CALIBRATION))
    except ValueError as e:
        raise HarnessError(f"--cascade {text!r}: {e}") from e


def task_cascade(spec, asked: CascadeSettings | None) -> CascadeSettings | None:
    """The cascade an eval runs: the task's own where it fixes one (`[simulator] cascade`; asking for another is
    refused, since its results would not be comparable with the task's leaderboard), else what was asked (None:
    exhaustive)."""
    if not spec.simulator.cascade:
        return asked
    fixed = parse_cascade(spec.simulator.cascade)
    if asked is not None and asked != fixed:
        raise HarnessError(f"task {spec.id} fixes its cascade ({spec.simulator.cascade}); --cascade asks for another: "
                           "drop --cascade, or change the task with --override simulator.cascade=... (a new hash)")
    return fixed

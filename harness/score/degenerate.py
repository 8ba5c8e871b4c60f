"""Warnings about predictions that cannot carry information (docs/protocol.md §3, gaming resistance).

The quantile map only uses the order of a latent's predictions, so a simulator that answers the same for
every context (an explanation that instructs it: "answer 9"), or the same for every latent (one explanation
copied to all), gives the patch nothing to work with. `harness eval` reports these cases instead of silently
scoring them; the score itself is unchanged (a degenerate submission is scored, and scores like a control).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np

# The digit prompt answers on 0..9; other prompts (log-odds, raw scores) have no fixed top.
SCALE_TOP = {"v1": 9.0, "v2": 9.0}


@dataclass
class DegenerateWarning:
    kind: str            # "constant" | "at-maximum" | "identical-across-latents"
    latents: list[int]
    message: str

    def to_dict(self) -> dict:
        return asdict(self)


def _short(latents: list[int]) -> str:
    return ", ".join(map(str, latents[:8])) + (f", … ({len(latents)} in all)" if len(latents) > 8 else "")


def degenerate_predictions(pred: np.ndarray, latents: np.ndarray, prompt_version: str = "",
                           share: float = 0.9) -> list[DegenerateWarning]:
    """Warnings for predictions [n_contexts, m] (calibration and test stacked) of the scored latents.

    * constant: a latent's predictions have a range of at most 1e-6 of their size: nothing to rank.
    * at-maximum: at least `share` of a latent's predictions sit at the top, i.e. within 0.5 of the
      prompt's top answer when it has one (digit prompt: 9), else tied with the latent's own maximum.
    * identical-across-latents: several latents get exactly the same prediction on every context, as a
      copied explanation does (the simulator sees the same prompt for each).
    """
    pred = np.asarray(pred, dtype=np.float64)
    ids = [int(j) for j in latents]
    out: list[DegenerateWarning] = []
    if pred.ndim != 2 or pred.size == 0:
        return out
    hi, lo = pred.max(0), pred.min(0)
    const = (hi - lo) <= 1e-6 * np.maximum(1.0, np.abs(hi))
    if const.any():
        ls = [ids[i] for i in np.flatnonzero(const)]
        out.append(DegenerateWarning("constant", ls, f"constant predictions for latent(s) {_short(ls)}: the "
                                     "simulator gives every context the same answer, so nothing can be ranked"))
    top = SCALE_TOP.get(prompt_version)
    at_top = (pred >= top - 0.5) if top is not None else (pred >= hi - 1e-6 * np.maximum(1.0, np.abs(hi)))
    maxed = (at_top.mean(0) >= share) & ~const
    if maxed.any():
        ls = [ids[i] for i in np.flatnonzero(maxed)]
        where = f"within 0.5 of the top answer {top:g}" if top is not None else "tied at the latent's maximum"
        out.append(DegenerateWarning("at-maximum", ls, f"{share:.0%}+ of the predictions are {where} for "
                                     f"latent(s) {_short(ls)}: does the explanation instruct the simulator?"))
    if pred.shape[1] > 1:
        _, first, counts = np.unique(pred.T, axis=0, return_index=True, return_counts=True)
        dup = counts > 1
        if dup.any():
            groups = [sorted(ids[i] for i in np.flatnonzero((pred.T == pred.T[f]).all(1))) for f in first[dup]]
            ls = sorted(j for g in groups for j in g)
            out.append(DegenerateWarning("identical-across-latents", ls,
                                         f"{len(ls)} latents in {len(groups)} group(s) get identical predictions on "
                                         f"every context ({_short(ls)}): one explanation copied to several latents?"))
    return out

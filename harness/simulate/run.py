"""docs/protocol.md §3: every prediction a result needs, laid out as (context, explanation) pairs and made
through the persistent prediction store: calibration and test contexts × every scored latent, then each
latent's detection examples."""

from __future__ import annotations

import functools
import hashlib
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from harness.data.prepare import Prepared
from harness.io import cache_root, progress
from harness.model.load import ModelRef
from harness.simulate.base import SimContext, Simulator
from harness.task.spec import TaskSpec


def context_id(text: str, last: str) -> str:
    # The prompt depends on the text alone, so identical text shares predictions across tasks and runs.
    return hashlib.sha256(f"{text}\x00{last}".encode()).hexdigest()[:24]


def sim_contexts(tokenizer, rows: list[np.ndarray]) -> list[SimContext]:
    """Each row's text before the scored token, and the scored (last) token, decoded by `tokenizer`."""
    out = []
    for ids in rows:
        text = tokenizer.decode(ids[:-1].tolist())
        last = tokenizer.decode([int(ids[-1])])
        out.append(SimContext(context_id(text, last), text, last))
    return out


def load_simulator(spec: TaskSpec, backend: str, device, subject_model=None, subject_tok=None,
                   endpoints=(), served_model: str = "", contexts: list[SimContext] | None = None
                   ) -> tuple[Simulator, ModelRef]:
    """The task's simulator on `backend`; the subject's weights are reused when the simulator is the subject.

    `auto` runs the engine measured fastest here (harness/simulate/choice.py), timed on `contexts` (the task's
    calibration contexts) the first time; the simulator's `choice` attribute says which and why."""
    from harness.model.load import load_model, load_tokenizer, resolve_source_folder
    from harness.simulate import make_simulator

    ref = spec.simulator_ref()
    sim_kw: dict[str, Any] = dict(prompt_version=spec.simulator.prompt_version,
                                  max_chars=spec.simulator.max_explanation_chars, model_key=ref.key())

    @functools.cache
    def source_folder():
        # Asked up to three times on the vLLM/auto path (engine, tokenizer, label); resolving checks the
        # converted model's files each time, so once is enough.
        return resolve_source_folder(ref, spec.folder, cache_root())

    def torch_engine(name: str) -> Simulator:
        if subject_model is not None and ref == spec.subject_ref():
            model, tok = subject_model, subject_tok
        else:
            model, tok = load_model(ref, spec.folder, cache_root(), device=device)
        return make_simulator(name, model, tok, batch_size=spec.simulator.batch_size, **sim_kw)

    def tokenizer():
        # vLLM and servers hold the weights themselves: only the tokenizer is local, so prompts are built as
        # token ids here and no server-side chat template is ever applied.
        return load_tokenizer(ref, source_folder())

    def vllm_engine() -> Simulator:
        import torch

        # The task's dtype, as the torch engines load it: the store keys predictions on it (ModelRef.key).
        folder = source_folder()
        return make_simulator("vllm", str(folder) if folder is not None else ref.id, tokenizer(), dtype=ref.dtype,
                              threads=torch.get_num_threads() if str(device).startswith("cpu") else None,
                              **sim_kw)

    if backend == "http":
        return make_simulator("http", served_model or ref.id or str(source_folder()), tokenizer(),
                              endpoints=list(endpoints), **sim_kw), ref
    if backend == "vllm":
        return vllm_engine(), ref
    if backend in (None, "", "auto"):
        from harness.simulate.choice import choose_engine

        def label() -> str:
            folder = source_folder()
            return folder.name if folder is not None else ref.describe()

        sim, choice = choose_engine(lambda name: vllm_engine() if name == "vllm" else torch_engine(name),
                                    contexts or [], ref.key(), spec.simulator.prompt_version, device, label,
                                    ref.dtype)
        sim.choice = choice   # pyright: ignore[reportAttributeAccessIssue]  # the result's provenance reads it
        return sim, ref
    return torch_engine(backend), ref


@dataclass
class Predictions:
    """The simulator's scores (`prompt_score`: expected digit, or log-odds) for one submission."""

    calibration: np.ndarray                 # [n_cal, m]
    test: np.ndarray                        # [n_test, m]
    detection_pos: list[np.ndarray]         # per latent, its positive detection examples
    detection_neg: list[np.ndarray]
    stats: dict[str, int | float | str] = field(default_factory=dict)   # counts for the provenance


def scored_contexts(prep: Prepared, tokenizer) -> list[SimContext]:
    """The calibration contexts, then the test contexts: the rows every latent is simulated on."""
    T = prep.spec.contexts.T
    return [c for split in ("calibration", "test") for c in sim_contexts(tokenizer, list(prep.splits[split][:, :T]))]


@dataclass
class PairLayout:
    """Every (context, latent) pair a result's predictions come from, in the order `simulate_all` makes them.

    `contexts` are the calibration contexts, the test contexts, then the detection contexts the scored latents
    use; `pairs` index them as (context, latent column). Detection pair i is latent `det_latent[i]`'s
    positive (`det_positive[i]`) example number `det_slot[i]`: its column in the side file's `det_pred_pos` /
    `det_pred_neg`.
    """

    contexts: list[SimContext]
    n_cal: int
    n_test: int
    pairs: np.ndarray          # [n, 2] calibration and test pairs, row-major over the mask
    det_pairs: np.ndarray      # [n_det, 2]
    det_latent: np.ndarray     # [n_det] latent column
    det_positive: np.ndarray   # [n_det] bool
    det_slot: np.ndarray       # [n_det] index among that latent's positives (or negatives)


def pair_layout(prep: Prepared, tokenizer, latents: np.ndarray, only: np.ndarray | None = None,
                scored: list[SimContext] | None = None) -> PairLayout:
    """The pairs `simulate_all` predicts; `only` and `scored` as there."""
    scored = scored if scored is not None else scored_contexts(prep, tokenizer)
    n_cal = len(prep.splits["calibration"])
    n_test = len(scored) - n_cal
    row_of = {int(j): r for r, j in enumerate(prep.rewritten)}
    rows = np.asarray([row_of[int(j)] for j in latents])
    pos, neg = prep.det_pos[rows], prep.det_neg[rows]
    det_rows = np.unique(np.concatenate([pos[pos >= 0], neg[neg >= 0]]))
    det_index = {int(r): i for i, r in enumerate(det_rows)}
    det = sim_contexts(tokenizer, [prep.splits["detection"][b, : e + 1] for b, e in prep.det_contexts[det_rows]])
    m = len(latents)
    mask = np.ones((len(scored), m), bool) if only is None else np.asarray(only, bool)
    # Row-major, as the exhaustive order: with every pair selected a cascade run is the exhaustive run.
    pairs = np.stack(np.nonzero(mask), axis=1).astype(np.int64).reshape(-1, 2)
    det_pairs, det_latent, det_positive, det_slot = [], [], [], []
    for e in range(m):
        for positive, ex in ((True, pos[e][pos[e] >= 0]), (False, neg[e][neg[e] >= 0])):
            for i, r in enumerate(ex):
                det_pairs.append((len(scored) + det_index[int(r)], e))
                det_latent.append(e)
                det_positive.append(positive)
                det_slot.append(i)
    return PairLayout(contexts=scored + det, n_cal=n_cal, n_test=n_test, pairs=pairs,
                      det_pairs=np.asarray(det_pairs, np.int64).reshape(-1, 2),
                      det_latent=np.asarray(det_latent, np.int64), det_positive=np.asarray(det_positive, bool),
                      det_slot=np.asarray(det_slot, np.int64))


def simulate_all(prep: Prepared, tokenizer, sim, explanations: list[str], latents: np.ndarray,
                 only: np.ndarray | None = None, fill: float = 0.0,
                 scored: list[SimContext] | None = None) -> Predictions:
    """Every prediction the metrics need, through the persistent store: calibration, test, detection.

    `only` [n_cal + n_test, m] (a cascade's plan, harness/simulate/cascade.py) limits the calibration and test
    pairs simulated; the others get `fill`. `scored`: `scored_contexts(prep, tokenizer)`, when the caller has it.
    """
    from harness.simulate.prompt import prompt_score
    from harness.simulate.store import CachedSimulator, PredictionStore

    lay = pair_layout(prep, tokenizer, latents, only, scored)
    n_cal, m = lay.n_cal, len(latents)
    mask = np.ones((lay.n_cal + lay.n_test, m), bool) if only is None else np.asarray(only, bool)
    pairs = [(int(c), int(e)) for c, e in lay.pairs]
    det_pairs = [(int(c), int(e)) for c, e in lay.det_pairs]
    contexts = lay.contexts
    store = PredictionStore(cache_root() / "predictions.sqlite")
    cached = CachedSimulator(sim, store)
    with progress() as prog:
        t = prog.add_task(f"simulating ({sim.name})", total=len(pairs) + len(det_pairs))
        probs, mass = cached.predict(contexts, explanations, pairs + det_pairs,
                                     progress=lambda n: prog.advance(t, n))
    ev = prompt_score(sim.prompt_version, probs)
    grid = np.full(mask.shape, fill, np.float32)
    grid[mask] = ev[: len(pairs)]
    det_ev = ev[len(pairs):]
    pos_pred = [det_ev[(lay.det_latent == e) & lay.det_positive] for e in range(m)]
    neg_pred = [det_ev[(lay.det_latent == e) & ~lay.det_positive] for e in range(m)]
    stats: dict[str, int | float | str] = {
        "n_predictions": len(pairs) + len(det_pairs), "n_computed": cached.n_computed, "n_cached": cached.n_cached,
        "answer_mass_mean": float(np.mean(mass)) if len(mass) else float("nan")}
    # Stored predictions were made in other batches: equal within the tolerance of docs/protocol-choices.md
    # (Simulation), not necessarily bit for bit; the result says whether it depends on the store's history.
    stats["prediction_source"] = ("computed" if not cached.n_cached else
                                  "store" if not cached.n_computed else "mixed")
    return Predictions(calibration=grid[:n_cal], test=grid[n_cal:],
                       detection_pos=pos_pred, detection_neg=neg_pred, stats=stats)

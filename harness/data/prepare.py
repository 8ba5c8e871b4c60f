"""docs/protocol.md §2: the four splits, true latent activations, activation tables and baseline CE, cached.

Everything is computed once per task hash under `task_cache_dir(spec)`, one file per step, each
written atomically, so an interrupted `harness prepare` resumes at the first missing step.

Contexts come from non-overlapping blocks of T+1 tokens of the corpus, shuffled with the task seed and
dealt out to calibration, test, detection and activation_sample in that order. Calibration and test
contexts are whole windows: T tokens, scored at position T-1, target at T. The activation sample and the
detection pool use every position from `min_position` (default T//2) to T-1 of their blocks: each such
position is a context made of the block's tokens up to it, exactly what the model saw there, so one
forward pass yields many contexts (that is what makes 100 positives per rare latent affordable).
"""

from __future__ import annotations

import json
import os
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

from harness.score.calibrate import ActivationTable, build_activation_table
from harness.io import env_int, one_line
from harness.model.coder import SparseCoder
from harness.errors import HarnessError
from harness.report.result import atomic_write
from harness.task.spec import TaskSpec, task_cache_dir, verify_artifacts

BATCH = env_int("HARNESS_BATCH", 32)


def progress() -> Progress:
    return Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                    TimeRemainingColumn(), transient=False)


def save_npz(path: Path, **arrays) -> None:
    atomic_write(path, lambda f: np.savez_compressed(f, **arrays))


def load_npz(path: Path) -> dict[str, np.ndarray]:
    with np.load(path) as z:
        return {k: z[k] for k in z.files}


def load_cached(path: Path, load=load_npz, keys: tuple[str, ...] = ()):
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


@dataclass
class Prepared:
    spec: TaskSpec
    cache_dir: Path
    splits: dict[str, np.ndarray]          # calibration/test: [n, T+1]; detection/activation: [n, T+1] blocks
    rewritten: np.ndarray                  # [m] latent indices
    table: ActivationTable
    calib_latents: tuple[np.ndarray, np.ndarray]   # (values, indices) [n_cal, k] at the last position
    test_latents: tuple[np.ndarray, np.ndarray]
    det_pos: np.ndarray                    # [m, P] rows into det_contexts (-1 where a latent has too few)
    det_neg: np.ndarray                    # [m, N]
    det_contexts: np.ndarray               # [n_ctx, 2] (block, end position)
    ce_base: dict[str, np.ndarray]         # clean / coder / zero_output over test contexts [n_test]
    num_latents: int
    k: int
    model: object = None                   # the subject, when a step had to load it (reused by eval)
    tokenizer: object = None


# ---------------------------------------------------------------- splits

def split_sizes(spec: TaskSpec) -> dict[str, int]:
    c = spec.contexts
    span = c.T - spec.min_position()
    act = -(-c.activation_sample_tokens // span)
    pool = c.detection_pool or max(c.calibration, 64)
    return {"calibration": c.calibration, "test": c.test, "detection": pool, "activation": act}


def make_splits(tokens: np.ndarray, spec: TaskSpec) -> dict[str, np.ndarray]:
    T = spec.contexts.T
    sizes = split_sizes(spec)
    need = sum(sizes.values())
    n_blocks = len(tokens) // (T + 1)
    if n_blocks < need:
        raise HarnessError(
            f"{spec.toml_path}: the corpus has {len(tokens)} tokens = {n_blocks} blocks of T+1={T + 1}, "
            f"the splits need {need} ({sizes}); shrink the split sizes or use a larger corpus"
        )
    blocks = tokens[: n_blocks * (T + 1)].reshape(n_blocks, T + 1)
    order = np.random.default_rng(spec.contexts.seed).permutation(n_blocks)
    out, start = {}, 0
    for name in ("calibration", "test", "detection", "activation"):
        out[name] = blocks[np.sort(order[start:start + sizes[name]])].astype(np.int64)
        start += sizes[name]
    return out


# ---------------------------------------------------------------- coder inputs at chosen positions

class _Stop(Exception):
    pass


def hook_module(model, spec: TaskSpec):
    from harness.model.patch import resolve_hookpoint

    return resolve_hookpoint(model, spec.coder.hookpoint)


@torch.inference_mode()
def coder_inputs(model, module, kind: str, ids: torch.Tensor, lo: int) -> torch.Tensor:
    """Coder input x at positions lo..end of each row: [B, end-lo, d]. Stops the forward at the hookpoint."""
    got = {}

    def pre(mod, args, kwargs):
        h = args[0] if args else kwargs["hidden_states"]
        got["x"] = h[:, lo:].float().clone()
        raise _Stop

    def post(mod, args, output):
        h = output[0] if isinstance(output, tuple) else output
        got["x"] = h[:, lo:].float().clone()
        raise _Stop

    handle = (module.register_forward_pre_hook(pre, with_kwargs=True) if kind == "transcoder"
              else module.register_forward_hook(post))
    try:
        model(input_ids=ids, use_cache=False)
    except _Stop:
        pass
    finally:
        handle.remove()
    return got["x"]


def encode_positions(model, module, coder: SparseCoder, kind: str, blocks: np.ndarray, lo: int, hi: int,
                     desc: str, device) -> tuple[np.ndarray, np.ndarray]:
    """Coder TopK output at positions lo..hi-1 of every block: (values [n, hi-lo, k], indices uint16/int32)."""
    n = len(blocks)
    k = coder.k
    idx_dtype = np.uint16 if coder.num_latents <= 65536 else np.int32
    vals = np.zeros((n, hi - lo, k), np.float32)
    inds = np.zeros((n, hi - lo, k), idx_dtype)
    with progress() as prog:
        t = prog.add_task(desc, total=n)
        for s in range(0, n, BATCH):
            ids = torch.from_numpy(blocks[s:s + BATCH, :hi]).to(device)
            x = coder_inputs(model, module, kind, ids, lo)
            v, i = coder.encode(x.reshape(-1, x.shape[-1]))
            b = ids.shape[0]
            vals[s:s + b] = v.reshape(b, hi - lo, k).cpu().numpy()
            inds[s:s + b] = i.reshape(b, hi - lo, k).cpu().numpy().astype(idx_dtype)
            prog.advance(t, b)
    return vals, inds


# ---------------------------------------------------------------- rewritten latents and detection examples

TOP_TOKENS = 5   # how many token types a "lexical" latent's firings are counted on


def token_concentration(vals: np.ndarray, inds: np.ndarray, tokens: np.ndarray, num_latents: int,
                        top: int = TOP_TOKENS) -> tuple[np.ndarray, np.ndarray]:
    """Per latent: the share of its firing positions whose token is one of its `top` most frequent ones, and
    that most frequent token id (-1 where it never fires). vals/inds [n, span, k], tokens [n, span]."""
    k = vals.shape[-1]
    fires = vals.reshape(-1, k) > 0
    lat = inds.reshape(-1, k).astype(np.int64)[fires]
    tok = np.broadcast_to(tokens.reshape(-1, 1), fires.shape)[fires].astype(np.int64)
    share = np.zeros(num_latents)
    first = np.full(num_latents, -1, np.int64)
    if not len(lat):
        return share, first
    pair, count = np.unique(lat * (int(tok.max()) + 1) + tok, return_counts=True)
    p_lat, p_tok = np.divmod(pair, int(tok.max()) + 1)
    order = np.lexsort((-count, p_lat))          # by latent, most frequent token first
    p_lat, p_tok, count = p_lat[order], p_tok[order], count[order]
    starts = np.flatnonzero(np.r_[True, p_lat[1:] != p_lat[:-1]])
    rank = np.arange(len(p_lat)) - np.repeat(starts, np.diff(np.r_[starts, len(p_lat)]))
    total = np.bincount(p_lat, weights=count, minlength=num_latents)
    in_top = np.bincount(p_lat[rank < top], weights=count[rank < top], minlength=num_latents)
    share = np.divide(in_top, total, out=np.zeros(num_latents), where=total > 0)
    first[p_lat[starts]] = p_tok[starts]
    return share, first


def choose_rewritten(spec: TaskSpec, table: ActivationTable, num_latents: int,
                     stats: dict[str, np.ndarray] | None = None) -> np.ndarray:
    lat = spec.latents
    if lat.rewritten == "all":
        return np.arange(num_latents)
    if lat.rewritten != "rule":
        bad = [j for j in lat.rewritten if j >= num_latents]
        if bad:
            raise HarnessError(f"{spec.toml_path} [latents]: latent {bad[0]} is out of range (coder has {num_latents})")
        return np.asarray(lat.rewritten, dtype=np.int64)
    alive = np.flatnonzero((table.fire_rate > 0) & (table.fire_rate >= lat.min_fire_rate))
    if len(alive) < lat.count:
        floor = f" at a rate of at least {lat.min_fire_rate:g}" if lat.min_fire_rate else ""
        raise HarnessError(f"{spec.toml_path} [latents]: asks for {lat.count} latents but only {len(alive)} fire{floor}")
    rng = np.random.default_rng(lat.seed)
    if lat.rule == "lexical":
        # Latents whose firings concentrate on few token types, each with a different most frequent token:
        # an explanation can describe them, and a permuted explanation describes another token.
        assert stats is not None
        share, first = stats["top_token_share"], stats["top_token"]
        ranked = alive[np.lexsort((-table.fire_rate[alive], -share[alive]))]
        pick, seen = [], set()
        for j in ranked:
            if int(first[j]) not in seen:
                pick.append(j)
                seen.add(int(first[j]))
            if len(pick) == lat.count:
                break
        if len(pick) < lat.count:
            raise HarnessError(f"{spec.toml_path} [latents]: only {len(pick)} lexical latents with distinct top tokens")
        pick = np.asarray(pick)
    elif lat.rule == "random-alive":
        pick = rng.choice(alive, lat.count, replace=False)
    elif lat.rule == "most-frequent":
        pick = alive[np.argsort(-table.fire_rate[alive], kind="stable")[: lat.count]]
    else:  # stratified: equal numbers from each firing-rate quartile, so rare and common latents both count
        ranked = alive[np.argsort(table.fire_rate[alive], kind="stable")]
        strata = np.array_split(ranked, 4)
        per = [lat.count // 4 + (i < lat.count % 4) for i in range(4)]
        pick = np.concatenate([rng.choice(s, p, replace=False) for s, p in zip(strata, per)])
    return np.sort(pick.astype(np.int64))


def choose_detection(vals: np.ndarray, inds: np.ndarray, rewritten: np.ndarray, n_pos: int, n_neg: int,
                     seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per rewritten latent, n_pos contexts where it fires and n_neg where it does not (seeded)."""
    n, span, k = vals.shape
    flat_v = vals.reshape(n * span, k)
    flat_i = inds.reshape(n * span, k).astype(np.int64)
    contexts = np.stack(np.divmod(np.arange(n * span), span), axis=1)  # (block, offset)
    rng = np.random.default_rng(seed)
    pos = np.full((len(rewritten), n_pos), -1, np.int64)
    neg = np.full((len(rewritten), n_neg), -1, np.int64)
    fires = (flat_v > 0)
    lookup = {int(j): r for r, j in enumerate(rewritten)}
    rows_of: dict[int, list[int]] = {int(j): [] for j in rewritten}
    hit_rows, hit_cols = np.nonzero(fires)
    for row, lat in zip(hit_rows, flat_i[hit_rows, hit_cols]):
        if int(lat) in lookup:
            rows_of[int(lat)].append(int(row))
    for j, r in lookup.items():
        p = np.unique(np.asarray(rows_of[j], dtype=np.int64))
        if len(p):
            take = rng.choice(p, min(n_pos, len(p)), replace=False)
            pos[r, : len(take)] = take
        mask = np.ones(n * span, bool)
        mask[p] = False
        cand = np.flatnonzero(mask)
        take = rng.choice(cand, min(n_neg, len(cand)), replace=False)
        neg[r, : len(take)] = take
    return pos, neg, contexts


# ---------------------------------------------------------------- baseline CE

@torch.inference_mode()
def baseline_ce(model, spec: TaskSpec, coder: SparseCoder, windows: np.ndarray, device, desc: str):
    """CE of clean / coder / zero_output and the true latents at the last position of each window."""
    from harness.model.patch import Patcher

    kind = spec.coder.kind
    n, k = len(windows), coder.k
    out = {"clean": np.zeros(n), "coder": np.zeros(n), "zero_output": np.full(n, np.nan)}
    vals = np.zeros((n, k), np.float32)
    inds = np.zeros((n, k), np.int64)
    patcher = Patcher(model, spec.coder.hookpoint, kind)
    with progress() as prog:
        t = prog.add_task(desc, total=n)
        for s in range(0, n, BATCH):
            ids = torch.from_numpy(windows[s:s + BATCH]).to(device)
            inputs, targets = ids[:, :-1], ids[:, -1]
            with patcher.prefix(inputs) as h:
                last = h.capture(targets)
                v, i = coder.encode(last.x)
                recon = coder.decode_dense(coder.dense(v, i), last.x)
                b = ids.shape[0]
                out["clean"][s:s + b] = last.ce_clean.double().cpu().numpy()
                out["coder"][s:s + b] = h.ce(recon, targets).double().cpu().numpy()
                if kind == "transcoder":
                    out["zero_output"][s:s + b] = h.ce(torch.zeros_like(last.y), targets).double().cpu().numpy()
            vals[s:s + b] = v.cpu().numpy()
            inds[s:s + b] = i.cpu().numpy()
            prog.advance(t, b)
    return out, vals, inds


# ---------------------------------------------------------------- the step runner

def load_subject(spec: TaskSpec, device):
    from harness.model.load import load_model
    from harness.task.spec import cache_root

    return load_model(spec.subject_ref(), spec.folder, cache_root(), device=device)


def coder_num_latents(spec: TaskSpec) -> int:
    """The coder's width without loading its weights: declared in the spec, else read from its cfg.json."""
    if spec.coder.num_latents:
        return spec.coder.num_latents
    from harness.model.coder import read_cfg
    from harness.hub import fetch_coder_folder

    return read_cfg(fetch_coder_folder(spec))[1]


def load_coder(spec: TaskSpec) -> SparseCoder:
    from harness.hub import fetch_coder_folder

    coder = SparseCoder.load(fetch_coder_folder(spec), kind=spec.coder.kind)
    for name, declared, actual in (("num_latents", spec.coder.num_latents, coder.num_latents), ("k", spec.coder.k, coder.k)):
        if declared and declared != actual:
            raise HarnessError(f"{spec.toml_path} [coder]: declares {name} = {declared} but the checkpoint has {actual}; "
                               "wrong coder folder or hookpoint")
    return coder


def prepare(spec: TaskSpec, device: str | torch.device = "cpu", model=None, tokenizer=None,
            console=None) -> Prepared:
    from harness.hub import require_hub_inputs

    require_hub_inputs(spec)  # offline with missing inputs: one line now, not a traceback later
    verify_artifacts(spec)
    cache = task_cache_dir(spec)
    (cache / "task.json").write_text(json.dumps({"id": spec.id, "hash": spec.hash, "toml": str(spec.toml_path)}))
    coder = load_coder(spec)
    T, lo = spec.contexts.T, spec.min_position()

    def subject():
        nonlocal model, tokenizer
        if model is None:
            model, tokenizer = load_subject(spec, device)
        return model, tokenizer

    f_splits = cache / "splits.npz"
    splits = load_cached(f_splits, keys=("calibration", "test", "detection", "activation"))
    if splits is None:
        from harness.data.corpus import load_token_stream

        m, tok = subject()
        need = sum(split_sizes(spec).values()) * (T + 1)
        save_npz(f_splits, **make_splits(load_token_stream(spec, tok, int(need * 1.05) + T, cache), spec))
        splits = load_npz(f_splits)

    f_table, f_stats = cache / "activation_table.npz", cache / "latent_stats.npz"
    table = load_cached(f_table, ActivationTable.load)
    stats = load_cached(f_stats, keys=("top_token_share", "top_token"))
    # A format-1 table keeps only a quantile grid (inexact above Q - 1 non-zero values): rebuild it once.
    if table is None or stats is None or not table.exact:
        m, _ = subject()
        v, i = encode_positions(m, hook_module(m, spec), coder, spec.coder.kind, splits["activation"], lo, T,
                                "activation sample", device)
        share, first = token_concentration(v, i, splits["activation"][:, lo:T], coder.num_latents)
        save_npz(f_stats, top_token_share=share, top_token=first)
        stats = load_npz(f_stats)
        table = build_activation_table(v.reshape(-1, coder.k), i.reshape(-1, coder.k).astype(np.int64),
                                       coder.num_latents, spec.scoring.n_quantiles, spec.scoring.quantile_method)
        # ActivationTable.save writes in place; a temp name + rename keeps a kill from leaving half a table.
        tmp = f_table.with_name(f".{f_table.name}.{os.getpid()}.tmp")
        table.save(tmp)
        os.replace(tmp, f_table)
        table = ActivationTable.load(f_table)
    rewritten = choose_rewritten(spec, table, coder.num_latents, stats)

    f_det = cache / "detection.npz"
    det = load_cached(f_det, keys=("pos", "neg", "contexts", "rewritten"))
    if det is None:
        m, _ = subject()
        v, i = encode_positions(m, hook_module(m, spec), coder, spec.coder.kind, splits["detection"], lo, T,
                                "detection pool", device)
        pos, neg, ctxs = choose_detection(v, i, rewritten, spec.contexts.detection_positive,
                                          spec.contexts.detection_negative, spec.contexts.seed + 1)
        ctxs[:, 1] += lo  # offset → position in the block
        save_npz(f_det, pos=pos, neg=neg, contexts=ctxs, rewritten=rewritten)
        det = load_npz(f_det)
    if not np.array_equal(det["rewritten"], rewritten):
        raise HarnessError(f"{f_det}: cached detection examples belong to another latent set; delete {cache}")

    latents = {}
    ce_base = None
    for split in ("calibration", "test"):
        f = cache / f"latents_{split}.npz"
        z = load_cached(f, keys=("values", "indices", "ce_clean", "ce_coder", "ce_zero_output"))
        if z is None:
            m, _ = subject()
            ce, v, i = baseline_ce(m, spec, coder, splits[split], device, f"{split}: true latents + CE")
            save_npz(f, values=v, indices=i, **{f"ce_{k}": a for k, a in ce.items()})
            z = load_npz(f)
        latents[split] = (z["values"], z["indices"])
        if split == "test":
            ce_base = {k: z[f"ce_{k}"] for k in ("clean", "coder", "zero_output")}

    return Prepared(
        spec=spec, cache_dir=cache, splits=splits, rewritten=rewritten, table=table,
        calib_latents=latents["calibration"], test_latents=latents["test"],
        det_pos=det["pos"], det_neg=det["neg"], det_contexts=det["contexts"], ce_base=ce_base,
        num_latents=coder.num_latents, k=coder.k, model=model, tokenizer=tokenizer,
    )

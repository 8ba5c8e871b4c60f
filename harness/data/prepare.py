"""docs/protocol.md §2: the four splits, true latent activations, activation tables and baseline CE, cached.

Everything is computed once per prepared key (the task hash less the simulator and the scoring settings
no step reads) under `task_cache_dir(spec)`, one file per step, each
written atomically, so an interrupted `harness prepare` resumes at the first missing step. Which contexts
and latents each step uses is `harness.data.select`. Calibration and test
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

from harness.data.select import (
    choose_detection,
    choose_rewritten,
    make_splits,
    split_sizes,
    token_concentration,
    top_examples_floor,
    top_examples_table,
)
from harness.data.table import ActivationTable, build_activation_table
from harness.errors import HarnessError
from harness.io import batch_size, load_cached, load_npz, progress, save_npz
from harness.model.coder import SparseCoder
from harness.model.hooks import Capture, StopForward
from harness.model.patch import Patcher, resolve_hookpoint
from harness.task.inputs import TaskInputs
from harness.task.spec import TaskSpec, prepared_key, task_cache_dir


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


# ---------------------------------------------------------------- coder inputs at chosen positions

@torch.inference_mode()
def coder_inputs(model, module, kind: str, ids: torch.Tensor, lo: int) -> torch.Tensor:
    """Coder input x at positions lo..end of each row: [B, end-lo, d]. Stops the forward at the hookpoint."""
    def select(h: torch.Tensor) -> torch.Tensor:
        return h[:, lo:].float().clone()

    transcoder = kind == "transcoder"
    with Capture(module, inputs=transcoder, outputs=not transcoder, select=select, stop=True) as cap:
        try:
            model(input_ids=ids, use_cache=False)
        except StopForward:
            pass
    x = cap.x if transcoder else cap.y
    assert x is not None
    return x


def encode_positions(model, module, coder: SparseCoder, kind: str, blocks: np.ndarray, lo: int, hi: int,
                     desc: str, device) -> tuple[np.ndarray, np.ndarray]:
    """Coder TopK output at positions lo..hi-1 of every block: (values [n, hi-lo, k], indices uint16/int32)."""
    n = len(blocks)
    k = coder.k
    idx_dtype = np.uint16 if coder.num_latents <= 65536 else np.int32
    vals = np.zeros((n, hi - lo, k), np.float32)
    inds = np.zeros((n, hi - lo, k), idx_dtype)
    over = 0
    with progress() as prog:
        t = prog.add_task(desc, total=n)
        batch = batch_size()
        for s in range(0, n, batch):
            ids = torch.from_numpy(blocks[s:s + batch, :hi]).to(device)
            x = coder_inputs(model, module, kind, ids, lo)
            flat = x.reshape(-1, x.shape[-1])
            v, i = coder.encode(flat)
            if coder.activation != "topk":   # a ReLU/JumpReLU code may hold more latents than the k stored
                over += int(((coder.pre_acts(flat) > 0).sum(-1) > k).sum())
            b = ids.shape[0]
            vals[s:s + b] = v.reshape(b, hi - lo, k).cpu().numpy()
            inds[s:s + b] = i.reshape(b, hi - lo, k).cpu().numpy().astype(idx_dtype)
            prog.advance(t, b)
    if over:
        sys.stderr.write(f"warning: {desc}: {over:,} of {n * (hi - lo):,} tokens have more than k = {k} active latents; "
                         "the activation tables keep the k largest of each — raise [coder] k to keep them all\n")
    return vals, inds


# ---------------------------------------------------------------- baseline CE

@torch.inference_mode()
def baseline_ce(model, spec: TaskSpec, coder: SparseCoder, windows: np.ndarray, device, desc: str):
    """CE of clean / coder / zero_output and the true latents at the last position of each window."""
    kind = spec.coder.kind
    n, k = len(windows), coder.k
    out = {"clean": np.zeros(n), "coder": np.zeros(n), "zero_output": np.full(n, np.nan)}
    vals = np.zeros((n, k), np.float32)
    inds = np.zeros((n, k), np.int64)
    patcher = Patcher(model, spec.coder.hookpoint, kind)
    with progress() as prog:
        t = prog.add_task(desc, total=n)
        batch = batch_size()
        for s in range(0, n, batch):
            ids = torch.from_numpy(windows[s:s + batch]).to(device)
            inputs, targets = ids[:, :-1], ids[:, -1]
            with patcher.prefix(inputs) as h:
                last = h.capture(targets)
                v, i = coder.encode(last.x)
                recon = coder.decode_dense(coder.code(last.x), last.x)
                b = ids.shape[0]
                assert last.ce_clean is not None   # targets were given
                out["clean"][s:s + b] = last.ce_clean.double().cpu().numpy()
                out["coder"][s:s + b] = h.ce(recon, targets).double().cpu().numpy()
                if kind == "transcoder":
                    out["zero_output"][s:s + b] = h.ce(torch.zeros_like(last.y), targets).double().cpu().numpy()
            vals[s:s + b] = v.cpu().numpy()
            inds[s:s + b] = i.cpu().numpy()
            prog.advance(t, b)
    return out, vals, inds


# ---------------------------------------------------------------- the step runner

def prepare(spec: TaskSpec, device: str | torch.device = "cpu", inputs: TaskInputs | None = None) -> Prepared:
    """Run (or read back) every step; `inputs` loads the subject only if a step is missing from the cache."""
    inputs = inputs or TaskInputs(spec, device)
    inputs.check()
    device = inputs.device
    cache = task_cache_dir(spec)
    # The folder is shared by every task hash with the same prepared key: this names the latest to use it.
    (cache / "task.json").write_text(json.dumps({"id": spec.id, "prepared_key": prepared_key(spec),
                                                 "hash": spec.hash, "toml": str(spec.toml_path)}))
    coder = inputs.coder()
    T, lo = spec.contexts.T, spec.min_position()
    subject = inputs.subject

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
    encoded = None   # the activation sample's codes, when this run encodes it
    # A format-1 table keeps only a quantile grid (inexact above Q - 1 non-zero values): rebuild it once.
    if table is None or stats is None or not table.exact:
        m, _ = subject()
        v, i = encode_positions(m, resolve_hookpoint(m, spec.coder.hookpoint), coder, spec.coder.kind, splits["activation"], lo, T,
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
        encoded = (v, i)
    rewritten = choose_rewritten(spec, table, coder.num_latents, stats)
    if encoded is not None:
        # The baselines' top-activating examples come from the same pass (harness explain reads them).
        save_npz(cache / "top_examples.npz",
                 **top_examples_table(*encoded, rewritten, lo, floor=top_examples_floor(table, rewritten)))

    f_det = cache / "detection.npz"
    det = load_cached(f_det, keys=("pos", "neg", "contexts", "rewritten"))
    if det is None:
        m, _ = subject()
        v, i = encode_positions(m, resolve_hookpoint(m, spec.coder.hookpoint), coder, spec.coder.kind, splits["detection"], lo, T,
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

    assert ce_base is not None
    return Prepared(
        spec=spec, cache_dir=cache, splits=splits, rewritten=rewritten, table=table,
        calib_latents=latents["calibration"], test_latents=latents["test"],
        det_pos=det["pos"], det_neg=det["neg"], det_contexts=det["contexts"], ce_base=ce_base,
        num_latents=coder.num_latents, k=coder.k,
    )

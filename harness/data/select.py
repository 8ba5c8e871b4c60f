"""docs/protocol.md §2: which contexts go to which split, which latents are rewritten, and which contexts
are each latent's detection examples. Pure numpy, seeded.

Contexts come from non-overlapping blocks of T+1 tokens of the corpus, shuffled with the task seed and
dealt out to calibration, test, detection and activation_sample in that order.
"""

from __future__ import annotations

import numpy as np

from harness.data.table import ActivationTable
from harness.errors import HarnessError
from harness.task.spec import TaskSpec

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
    if not isinstance(lat.rewritten, str):     # an explicit list of latents
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
        pick = np.concatenate([rng.choice(s, p, replace=False) for s, p in zip(strata, per, strict=True)])
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
    for row, lat in zip(hit_rows, flat_i[hit_rows, hit_cols], strict=True):
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


TOP_EXAMPLES = 100  # top-activating examples kept per rewritten latent (top-tokens counts them all; llm shows a few)


def top_examples_floor(table, rewritten: np.ndarray, top_n: int = TOP_EXAMPLES) -> np.ndarray:
    """[num_latents] the smallest activation that can be among a rewritten latent's `top_n` in the sample its
    exact activation table was built from (+inf for the other latents): lets `top_examples_table` skip the
    full sort of every (position, slot) of a 10M-token sample."""
    floor = np.full(table.num_latents, np.inf, np.float32)
    for j in np.asarray(rewritten, np.int64):
        nz = table.nonzero_values(int(j))
        floor[j] = nz[-top_n] if len(nz) >= top_n else 0.0
    return floor


def top_examples_table(vals: np.ndarray, inds: np.ndarray, rewritten: np.ndarray, lo: int,
                       top_n: int = TOP_EXAMPLES, floor: np.ndarray | None = None) -> dict[str, np.ndarray]:
    """Per rewritten latent, its `top_n` highest activations in an encoded sample: (block, position, value),
    -1 / 0 padded, ties in sample order. `vals`, `inds` [n_blocks, span, k] as `encode_positions` returns them
    for positions lo... `floor` (`top_examples_floor`): entries below it are dropped before sorting, which
    leaves the answer unchanged (they could not be among the top) and the sort small."""
    n, span, k = vals.shape
    flat_v, flat_i = vals.reshape(-1), inds.reshape(-1)
    keep = flat_v > 0
    if floor is not None:
        keep &= flat_v >= floor[flat_i]
    where = np.flatnonzero(keep)
    flat_v, flat_i, ctx = flat_v[where], flat_i[where].astype(np.int64), where // k
    order = np.lexsort((-flat_v, flat_i))  # by latent, then by activation descending
    flat_v, flat_i, ctx = flat_v[order], flat_i[order], ctx[order]
    m = len(rewritten)
    block = np.full((m, top_n), -1, np.int64)
    pos = np.full((m, top_n), -1, np.int64)
    value = np.zeros((m, top_n), np.float32)
    starts = np.searchsorted(flat_i, rewritten, side="left")
    ends = np.searchsorted(flat_i, rewritten, side="right")
    for r, (a, b) in enumerate(zip(starts, ends, strict=True)):
        take = min(top_n, b - a)
        c = ctx[a:a + take]
        block[r, :take], pos[r, :take] = c // span, c % span + lo
        value[r, :take] = flat_v[a:a + take]
    return {"block": block, "pos": pos, "value": value, "rewritten": np.asarray(rewritten)}

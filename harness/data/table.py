"""The true activation distribution of every latent (docs/protocol.md §4), from the activation sample.

Because activations are mostly exact zeros, the true distribution is stored as a mixture: a point
mass `1 − fire_rate` at zero plus the *non-zero* values (all of them, and a `Q`-point quantile grid of
them). A plain quantile grid over all tokens would spend nearly all of its points on zeros and lose the
upper tail, which is exactly where the simulator's confident predictions land.

The quantile estimator is numpy's `method` (Hyndman & Fan type), pinned in the table and reported.
The default `inverted_cdf` returns observed values only, so a mapped prediction is either exactly
0 or a value the latent really took; interpolating methods would invent small positives just
above zero, which then count as "active" in sensitivity/specificity.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from harness.errors import HarnessError

# numpy.quantile's methods. The step-function ones return (averages of) order statistics, so
# between grid points they are read at the next grid point up rather than interpolated.
_DISCRETE_METHODS = ("inverted_cdf", "averaged_inverted_cdf", "closest_observation", "lower",
                     "higher", "nearest")
QUANTILE_METHODS = ("inverted_cdf", "averaged_inverted_cdf", "closest_observation",
                    "interpolated_inverted_cdf", "hazen", "weibull", "linear", "median_unbiased",
                    "normal_unbiased", "lower", "higher", "midpoint", "nearest")

# Format 2 adds `nz_sorted`, every non-zero value of every latent: the quantile map is then exact at any
# sample size instead of only up to Q - 1 non-zero values per latent (docs/protocol.md, calibration).
_TABLE_FORMAT = 2


def _check_method(method: str) -> None:
    if method not in QUANTILE_METHODS:
        raise HarnessError(f"unknown quantile method {method!r}; use one of: "
                           f"{', '.join(QUANTILE_METHODS)}")


def _inverted_cdf_index(n: int, p: np.ndarray) -> np.ndarray:
    """0-based order statistic that `np.quantile(x, p, method="inverted_cdf")` picks from n values.

    Copied from numpy's own arithmetic (index = n·p − 1, rounded up unless exactly integral)
    rather than written as ceil(n·p) − 1, so that the table and the inverse mapping agree with
    numpy bit for bit even where n·p lands a rounding error away from an integer.
    """
    index = n * np.asarray(p, dtype=np.float64) - 1
    previous = np.floor(index)
    res = np.where(index - previous == 0, previous, previous + 1).astype(np.intp)
    res[res < 0] = 0
    return res


@dataclass
class ActivationTable:
    """Per-latent true activation distribution: firing rate + quantiles of the non-zero values.

    `nz_quantiles[j]` holds quantiles at probabilities `np.linspace(0, 1, Q)` of the non-zero
    activations of latent j (all 0 for a latent that never fired). `nz_count` and `n_tokens` are
    kept as integers so that the zero/non-zero boundary of the mixture is decided by exact counts,
    not by `1 − fire_rate` in floating point.
    """

    fire_rate: np.ndarray     # [L] float64, = nz_count / n_tokens
    nz_quantiles: np.ndarray  # [L, Q] float32
    nz_count: np.ndarray      # [L] int64
    n_tokens: int
    method: str = "inverted_cdf"
    # Every non-zero value, sorted within each latent, latents in index order (latent j's slice starts at
    # nz_count[:j].sum()). With it `true_quantile` is numpy's estimator on the full sample, exactly; without
    # it (tables built by hand from a grid) it falls back to the Q-point grid.
    nz_sorted: np.ndarray | None = None

    def __post_init__(self) -> None:
        self.fire_rate = np.asarray(self.fire_rate, dtype=np.float64)
        self.nz_quantiles = np.asarray(self.nz_quantiles, dtype=np.float32)
        self.nz_count = np.asarray(self.nz_count, dtype=np.int64)
        self.n_tokens = int(self.n_tokens)
        self.method = str(self.method)
        _check_method(self.method)
        L = self.fire_rate.shape[0] if self.fire_rate.ndim == 1 else -1
        if (L < 0 or self.nz_count.shape != (L,) or self.nz_quantiles.ndim != 2
                or self.nz_quantiles.shape[0] != L or self.nz_quantiles.shape[1] < 2):
            raise HarnessError(
                f"activation table has inconsistent shapes: fire_rate {self.fire_rate.shape}, "
                f"nz_count {self.nz_count.shape}, nz_quantiles {self.nz_quantiles.shape}; "
                "rebuild it with `harness prepare`")
        if self.n_tokens <= 0 or np.any(self.nz_count < 0) or np.any(self.nz_count > self.n_tokens):
            raise HarnessError(f"activation table counts are invalid (n_tokens={self.n_tokens}); "
                               "rebuild it with `harness prepare`")
        if self.nz_sorted is not None:
            self.nz_sorted = np.asarray(self.nz_sorted, dtype=np.float32)
            if self.nz_sorted.shape != (int(self.nz_count.sum()),):
                raise HarnessError(f"activation table holds {self.nz_sorted.shape} non-zero values for "
                                   f"{int(self.nz_count.sum())} counted; rebuild it with `harness prepare`")
        self._starts = np.concatenate([[0], np.cumsum(self.nz_count)])

    @property
    def exact(self) -> bool:
        """True when the table keeps every non-zero value, so quantiles are numpy's on the full sample."""
        return self.nz_sorted is not None

    def nonzero_values(self, j: int) -> np.ndarray:
        """Latent j's non-zero activations over the activation sample, sorted (needs an exact table)."""
        if self.nz_sorted is None:
            raise HarnessError("this activation table keeps only a quantile grid; rebuild it with `harness prepare`")
        return self.nz_sorted[self._starts[j]:self._starts[j + 1]]

    @property
    def num_latents(self) -> int:
        return int(self.fire_rate.shape[0])

    @property
    def n_quantiles(self) -> int:
        return int(self.nz_quantiles.shape[1])

    @property
    def probs(self) -> np.ndarray:
        """The probability grid of `nz_quantiles` (conditional on firing)."""
        return np.linspace(0.0, 1.0, self.n_quantiles)

    def save(self, path: str | Path) -> None:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        # np.savez appends ".npz" to names without it; write to a handle so `path` is exact.
        with open(path, "wb") as fh:
            arrays: dict[str, Any] = dict(format=np.int64(_TABLE_FORMAT), fire_rate=self.fire_rate,
                                          nz_quantiles=self.nz_quantiles, nz_count=self.nz_count,
                                          n_tokens=np.int64(self.n_tokens), method=np.str_(self.method))
            if self.nz_sorted is not None:
                arrays["nz_sorted"] = self.nz_sorted
            np.savez(fh, **arrays)

    @classmethod
    def load(cls, path: str | Path) -> ActivationTable:
        path = Path(path)
        if not path.is_file():
            raise HarnessError(f"activation table {path} not found; run `harness prepare` first")
        try:
            with np.load(path, allow_pickle=False) as z:
                data = {k: z[k] for k in z.files}
        except Exception as exc:  # a truncated or foreign file: say which one
            raise HarnessError(f"activation table {path} is unreadable ({exc}); delete it and "
                               "run `harness prepare` again") from None
        need = ("format", "fire_rate", "nz_quantiles", "nz_count", "n_tokens", "method")
        missing = [k for k in need if k not in data]
        if missing:
            raise HarnessError(f"activation table {path} lacks {', '.join(missing)}; delete it "
                               "and run `harness prepare` again")
        if int(data["format"]) not in (1, _TABLE_FORMAT):
            raise HarnessError(f"activation table {path} has format {int(data['format'])}, this "
                               f"harness reads {_TABLE_FORMAT}; run `harness prepare` again")
        return cls(fire_rate=data["fire_rate"], nz_quantiles=data["nz_quantiles"],
                   nz_count=data["nz_count"], n_tokens=int(data["n_tokens"]),
                   method=str(data["method"]), nz_sorted=data.get("nz_sorted"))


def _check_topk(values: np.ndarray, indices: np.ndarray, num_latents: int) -> tuple[np.ndarray, np.ndarray]:
    values = np.asarray(values)
    indices = np.asarray(indices)
    if values.ndim != 2 or values.shape != indices.shape:
        raise HarnessError(f"TopK output must be values [n, k] and indices [n, k] of one shape; "
                           f"got {values.shape} and {indices.shape}")
    if not np.issubdtype(indices.dtype, np.integer):
        raise HarnessError(f"TopK indices must be integers, got dtype {indices.dtype}")
    if values.size and (indices.min() < 0 or indices.max() >= num_latents):
        raise HarnessError(f"TopK indices fall outside [0, {num_latents}); does num_latents "
                           "match the coder?")
    if not np.all(np.isfinite(values)):
        raise HarnessError("TopK values contain NaN or inf; the coder's activations are broken")
    if np.any(values < 0):
        # The zero-mass-plus-positive-tail mixture (and so true_quantile) assumes post-ReLU values.
        raise HarnessError("TopK values contain negative activations; the activation table "
                           "expects post-ReLU (non-negative) latents")
    firing = values != 0
    if values.shape[1] > 1:
        # A repeated latent within one token would be counted twice in its firing rate. Padding
        # entries (value 0) may repeat freely, so give each a distinct negative stand-in.
        idx = np.where(firing, indices, -1 - np.arange(values.shape[1]))
        idx = np.sort(idx, axis=1)
        if np.any(idx[:, 1:] == idx[:, :-1]):
            raise HarnessError("TopK indices repeat a latent within one token; expected "
                               "distinct indices per row")
    return values[firing], indices[firing]


class ActivationTableBuilder:
    """Accumulates TopK output batch by batch, so `prepare` need not hold all [n, k] arrays.

    Only the non-zero entries are kept (as float32 value + int32 latent), which is what the
    table is built from anyway; memory is ~8 bytes per firing entry.
    """

    def __init__(self, num_latents: int, n_quantiles: int = 1001, method: str = "inverted_cdf"):
        if num_latents <= 0:
            raise HarnessError(f"num_latents must be positive, got {num_latents}")
        if n_quantiles < 2:
            raise HarnessError(f"n_quantiles must be at least 2, got {n_quantiles}")
        _check_method(method)
        self.num_latents = int(num_latents)
        self.n_quantiles = int(n_quantiles)
        self.method = method
        self.n_tokens = 0
        self._values: list[np.ndarray] = []
        self._latents: list[np.ndarray] = []

    def add(self, values: np.ndarray, indices: np.ndarray) -> None:
        v, i = _check_topk(values, indices, self.num_latents)
        self.n_tokens += int(np.asarray(values).shape[0])
        self._values.append(v.astype(np.float32))
        self._latents.append(i.astype(np.int32 if self.num_latents < 2**31 else np.int64))

    def finish(self) -> ActivationTable:
        if self.n_tokens == 0:
            raise HarnessError("activation table needs at least one token; the "
                               "activation_sample split is empty")
        v = np.concatenate(self._values) if self._values else np.zeros(0, np.float32)
        i = np.concatenate(self._latents) if self._latents else np.zeros(0, np.int64)
        return _table_from_firing(v, i, self.n_tokens, self.num_latents, self.n_quantiles,
                                  self.method)


def _table_from_firing(values: np.ndarray, latents: np.ndarray, n_tokens: int, num_latents: int,
                       n_quantiles: int, method: str) -> ActivationTable:
    L, Q = num_latents, n_quantiles
    counts = np.bincount(latents, minlength=L).astype(np.int64)
    starts = np.concatenate([[0], np.cumsum(counts)])
    # Sort by (latent, value) in one pass: non-negative float32 bit patterns order like the
    # floats, so a uint64 key (latent << 32 | bits) sorts both at once without an argsort.
    key = (latents.astype(np.uint64) << np.uint64(32)) | values.view(np.uint32).astype(np.uint64)
    key.sort()
    sorted_vals = (key & np.uint64(0xFFFFFFFF)).astype(np.uint32).view(np.float32)
    del key

    probs = np.linspace(0.0, 1.0, Q)
    nz_quantiles = np.zeros((L, Q), dtype=np.float32)
    if method == "inverted_cdf":
        # Slices are already sorted, so the order statistics can be gathered directly; this is
        # ~10x faster than np.quantile's per-slice partition and gives identical values.
        for j in np.flatnonzero(counts):
            nz_quantiles[j] = sorted_vals[starts[j] + _inverted_cdf_index(int(counts[j]), probs)]
    else:
        for j in np.flatnonzero(counts):
            # `method` was checked against QUANTILE_METHODS; numpy types it as a Literal.
            nz_quantiles[j] = np.quantile(sorted_vals[starts[j]:starts[j + 1]], probs,
                                          method=method)  # pyright: ignore[reportCallIssue, reportArgumentType]
    return ActivationTable(fire_rate=counts / float(n_tokens), nz_quantiles=nz_quantiles,
                           nz_count=counts, n_tokens=n_tokens, method=method, nz_sorted=sorted_vals)


def build_activation_table(values: np.ndarray, indices: np.ndarray, num_latents: int,
                           n_quantiles: int = 1001, method: str = "inverted_cdf") -> ActivationTable:
    """Activation table from the coder's TopK output over n tokens.

    Entries whose value is exactly 0 (TopK can select a ReLU'd zero) count as not firing.
    """
    builder = ActivationTableBuilder(num_latents, n_quantiles, method)
    builder.add(values, indices)
    return builder.finish()


def true_quantile(table: ActivationTable, j: int, u: np.ndarray) -> np.ndarray:
    """F_true,j⁻¹(u) for the mixture "zero with mass 1 − fire_rate, else the non-zero values".

    For u ≤ 1 − fire_rate the answer is exactly 0.0. Above it, u maps to the conditional level
    v = (u − (1 − r)) / r within the non-zero values:

    With an exact table (every table `harness prepare` builds) this is `mixture_quantile`: numpy's
    estimator on the full sample, for any number of values. Tables holding only the Q-point grid use:

    * `inverted_cdf` (default): the order statistic numpy would pick from the *full* sample
      (zeros included) is turned into a rank among the non-zero values, and the first grid point
      whose rank is at least that one is returned. The answer is always an observed value; it
      equals `np.quantile(full_sample, u, method="inverted_cdf")` exactly whenever the grid
      contains that rank (always when nz_count ≤ Q − 1), otherwise it is the next observed
      quantile above it (never a value invented between 0 and the smallest activation).
    * other step methods: the grid point at ceil(v·(Q − 1)).
    * interpolating methods: linear interpolation of v in the grid (these methods' quantile
      functions are piecewise linear themselves). The zero mass is still kept exact.
    """
    u = np.asarray(u, dtype=np.float64)
    if np.any(~np.isfinite(u)) or np.any(u < 0) or np.any(u > 1):
        raise HarnessError("quantile levels u must lie in [0, 1]")
    if not 0 <= j < table.num_latents:
        raise HarnessError(f"latent {j} is outside the activation table (0..{table.num_latents - 1})")
    N = table.n_tokens
    c = int(table.nz_count[j])
    z = N - c
    out = np.zeros(u.shape, dtype=np.float64)
    if c == 0:
        return out
    if table.exact:
        return mixture_quantile(table.nonzero_values(j), N, u, table.method)
    grid = table.nz_quantiles[j].astype(np.float64)
    Q = grid.shape[0]
    if table.method == "inverted_cdf":
        k = _inverted_cdf_index(N, u)               # 0-based position in the full sorted sample
        fires = k >= z                              # zeros occupy positions 0..z-1
        rank = k[fires] - z                         # 0-based rank among the non-zero values
        grid_rank = _inverted_cdf_index(c, np.linspace(0.0, 1.0, Q))  # non-decreasing
        g = np.minimum(np.searchsorted(grid_rank, rank, side="left"), Q - 1)
        out[fires] = grid[g]
        return out
    fires = u * N > z
    v = (u[fires] * N - z) / c
    if table.method in _DISCRETE_METHODS:
        g = np.clip(np.ceil(v * (Q - 1) - 1e-9).astype(np.intp), 0, Q - 1)
        out[fires] = grid[g]
    else:
        out[fires] = np.interp(v, np.linspace(0.0, 1.0, Q), grid)
    return out


def _numpy_method(method: str):
    # numpy's own virtual-index and gamma rules for each Hyndman & Fan estimator: reusing them (rather than
    # retyping 13 formulas) keeps the map bit-compatible with np.quantile. They are private, so a numpy that
    # moves them fails here with one clear line, and tests/test_calibrate.py compares against np.quantile.
    try:
        from numpy.lib._function_base_impl import _QuantileMethods  # pyright: ignore[reportAttributeAccessIssue]
    except ImportError:  # pragma: no cover - numpy < 2 or a future layout
        raise HarnessError(f"this numpy ({np.__version__}) does not expose its quantile rules; "
                           "install numpy 2.x") from None
    return _QuantileMethods[method]


def _order_positions(n_tokens: int, u: np.ndarray, method: str):
    """The 0-based positions numpy's `method` reads from a sorted sample of n_tokens values at levels u:
    (previous, next, gamma), the answer being the lerp of the two by gamma (gamma None: `previous` only)."""
    N = int(n_tokens)
    rules = _numpy_method(method)
    vi = np.asanyarray(rules["get_virtual_index"](N, np.asarray(u, dtype=np.float64)))
    if np.issubdtype(vi.dtype, np.integer):
        pos = np.clip(vi, 0, N - 1).astype(np.intp)
        return pos, pos, None
    vi = vi.astype(np.float64)
    prev = np.floor(vi).astype(np.intp)
    nxt = prev + 1
    above, below = vi >= N - 1, vi < 0
    prev[above], nxt[above] = N - 1, N - 1
    prev[below], nxt[below] = 0, 0
    return prev, nxt, np.asanyarray(rules["fix_gamma"](vi - prev, vi), dtype=np.float64)


def mixture_quantile(nz_sorted: np.ndarray, n_tokens: int, u: np.ndarray, method: str) -> np.ndarray:
    """`np.quantile(x, u, method)` for x = (n_tokens − c) zeros followed by the c sorted non-zero values.

    The zeros are never materialised: numpy's virtual index is computed for the full sample size, and an
    order-statistic position below n_tokens − c reads 0. Exact for any sample size (no grid), so the
    top 0.1% of a latent maps to its top 0.1% of values, not to its maximum.
    """
    u = np.asarray(u, dtype=np.float64)
    vals = np.asarray(nz_sorted, dtype=np.float64)
    z = int(n_tokens) - vals.shape[0]

    def at(pos):
        out = np.zeros(pos.shape, dtype=np.float64)
        nz = pos >= z
        out[nz] = vals[pos[nz] - z]
        return out

    prev, nxt, gamma = _order_positions(n_tokens, u, method)
    if gamma is None:
        return at(prev).reshape(u.shape)
    a, b = at(prev), at(nxt)
    diff = b - a
    # numpy's _lerp: interpolate from the nearer end, so gamma = 1 returns b exactly.
    return np.where(gamma >= 0.5, b - diff * (1 - gamma), a + diff * gamma).reshape(u.shape)


def needed_nonzero_ranks(nz_count: int, n_tokens: int, u: np.ndarray, method: str) -> np.ndarray:
    """Ranks (0-based, among a latent's sorted non-zero values) that the map reads at levels u.

    A result's side file ships only these values: at paper scale (10M tokens) that is ~2% of a latent's
    non-zero activations, and `harness verify-result` can still rebuild np.quantile's answer exactly.
    """
    prev, nxt, _ = _order_positions(n_tokens, u, method)
    pos = np.unique(np.concatenate([prev.ravel(), nxt.ravel()]))
    ranks = pos - (int(n_tokens) - int(nz_count))
    return ranks[ranks >= 0].astype(np.int64)

"""Every simulator prediction ever made, in SQLite, so runs resume and explanations shared by submissions
are scored once.

Keyed by (model_key, prompt_version, sha256 of the raw explanation, context_id): anything that changes a
prediction must change one of these (the model key carries revision and dtype; the context id must
identify the tokens). The backend is not part of the key: backends agree within float tolerance.
"""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Iterable, Sequence
from pathlib import Path

import numpy as np

from harness.errors import HarnessError
from harness.simulate.base import Pairs, Progress, SimContext, check_pairs, explanation_sha
from harness.simulate.prompt import PROMPT_VERSIONS, get_template

_SCHEMA = """
CREATE TABLE IF NOT EXISTS predictions (
    model_key TEXT NOT NULL,
    prompt_version TEXT NOT NULL,
    explanation_sha256 TEXT NOT NULL,
    context_id TEXT NOT NULL,
    probs BLOB NOT NULL,
    digit_mass REAL NOT NULL,
    created REAL NOT NULL,
    PRIMARY KEY (model_key, prompt_version, explanation_sha256, context_id)
) WITHOUT ROWID
"""

_IN_CHUNK = 500   # below SQLite's default limit of host parameters per statement


class PredictionStore:
    def __init__(self, path: Path | str, timeout_s: float = 60.0):
        self.path = Path(path)
        self.timeout_s = float(timeout_s)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        try:
            with self._connect() as con:
                con.execute("PRAGMA journal_mode=WAL")
                con.execute(_SCHEMA)
        except sqlite3.DatabaseError as e:
            raise HarnessError(f"prediction store {self.path} is unreadable ({e}): move it away to start afresh") from e

    def _connect(self) -> sqlite3.Connection:
        # A connection per call keeps the store safe to use from forked workers and threads.
        con = sqlite3.connect(self.path, timeout=self.timeout_s, isolation_level=None)
        con.execute(f"PRAGMA busy_timeout={int(self.timeout_s * 1000)}")
        con.execute("PRAGMA synchronous=NORMAL")
        return con

    def get_many(self, model_key: str, prompt_version: str, keys: Iterable[tuple[str, str]]
                 ) -> dict[tuple[str, str], tuple[np.ndarray, float]]:
        """keys are (explanation_sha256, context_id); absent keys are absent from the result."""
        by_exp: dict[str, list[str]] = {}
        for exp_sha, ctx_id in keys:
            by_exp.setdefault(exp_sha, []).append(ctx_id)
        found: dict[tuple[str, str], tuple[np.ndarray, float]] = {}
        con = self._connect()
        try:
            for exp_sha, ctx_ids in by_exp.items():
                ctx_ids = list(dict.fromkeys(ctx_ids))
                for start in range(0, len(ctx_ids), _IN_CHUNK):
                    chunk = ctx_ids[start:start + _IN_CHUNK]
                    rows = con.execute(
                        "SELECT context_id, probs, digit_mass FROM predictions WHERE model_key=? AND "
                        f"prompt_version=? AND explanation_sha256=? AND context_id IN ({','.join('?' * len(chunk))})",
                        [model_key, prompt_version, exp_sha, *chunk],
                    ).fetchall()
                    for ctx_id, blob, m in rows:
                        found[(exp_sha, ctx_id)] = (np.frombuffer(blob, dtype=np.float32).copy(), float(m))
        finally:
            con.close()
        return found

    def put_many(self, model_key: str, prompt_version: str,
                 rows: Iterable[tuple[str, str, np.ndarray, float]]) -> None:
        """rows are (explanation_sha256, context_id, probs [K answers], answer mass); one transaction, first write wins."""
        now = time.time()
        data = []
        n_answers = len(PROMPT_VERSIONS[prompt_version].answers) if prompt_version in PROMPT_VERSIONS else None
        for exp_sha, ctx_id, probs, m in rows:
            p = np.ascontiguousarray(probs, dtype=np.float32).reshape(-1)
            if p.shape[0] != (n_answers or p.shape[0]) or p.shape[0] < 2:
                raise ValueError(f"prompt {prompt_version} has {n_answers} answers, got probabilities of shape {p.shape}")
            data.append((model_key, prompt_version, exp_sha, ctx_id, p.tobytes(), float(m), now))
        if not data:
            return
        con = self._connect()
        try:
            # IMMEDIATE takes the write lock up front, so concurrent writers queue on busy_timeout instead
            # of failing on a lock upgrade.
            con.execute("BEGIN IMMEDIATE")
            try:
                con.executemany("INSERT OR IGNORE INTO predictions VALUES (?,?,?,?,?,?,?)", data)
                con.execute("COMMIT")
            except BaseException:
                con.execute("ROLLBACK")
                raise
        finally:
            con.close()

    def count(self, model_key: str | None = None, prompt_version: str | None = None) -> int:
        where, args = [], []
        if model_key is not None:
            where.append("model_key=?")
            args.append(model_key)
        if prompt_version is not None:
            where.append("prompt_version=?")
            args.append(prompt_version)
        sql = "SELECT COUNT(*) FROM predictions" + (" WHERE " + " AND ".join(where) if where else "")
        con = self._connect()
        try:
            return int(con.execute(sql, args).fetchone()[0])
        finally:
            con.close()


class CachedSimulator:
    """Any simulator behind the store: looks up first, computes only what is missing, chunk by chunk.

    Each chunk is written as soon as it is computed, so a killed run loses at most one chunk.
    """

    def __init__(self, inner, store: PredictionStore, chunk_size: int = 256):
        self.inner = inner
        self.store = store
        self.chunk_size = max(1, int(chunk_size))
        self.name = inner.name
        self.model_key = inner.model_key
        self.prompt_version = inner.prompt_version
        self.n_computed = 0
        self.n_cached = 0

    def predict(self, contexts: Sequence[SimContext], explanations: Sequence[str],
                pairs: Pairs, progress: Progress | None = None
                ) -> tuple[np.ndarray, np.ndarray]:
        pairs = check_pairs(contexts, explanations, pairs)
        shas = [explanation_sha(e) for e in explanations]
        keys = [(shas[e], contexts[c].context_id) for c, e in pairs]
        found = self.store.get_many(self.model_key, self.prompt_version, keys)
        probs = np.zeros((len(pairs), len(get_template(self.prompt_version).answers)), np.float32)
        mass = np.zeros(len(pairs), np.float32)

        # Rows with the same key are computed once; ordering by context keeps shared prefixes together.
        todo: dict[tuple[str, str], int] = {}
        n_rows: dict[tuple[str, str], int] = {}
        for i, k in enumerate(keys):
            if k not in found:
                todo.setdefault(k, i)
                n_rows[k] = n_rows.get(k, 0) + 1
        n_hit = len(pairs) - sum(n_rows.values())
        self.n_cached += n_hit
        if progress is not None and n_hit:
            progress(n_hit)
        first_rows = sorted(todo.values(), key=lambda i: (int(pairs[i, 0]), int(pairs[i, 1])))
        for start in range(0, len(first_rows), self.chunk_size):
            rows = first_rows[start:start + self.chunk_size]
            p, m = self.inner.predict(contexts, explanations, pairs[rows])
            self.store.put_many(self.model_key, self.prompt_version,
                                [(*keys[i], p[j], float(m[j])) for j, i in enumerate(rows)])
            for j, i in enumerate(rows):
                found[keys[i]] = (p[j], float(m[j]))
            self.n_computed += len(rows)
            if progress is not None:
                progress(sum(n_rows[keys[i]] for i in rows))
        for i, k in enumerate(keys):
            probs[i], mass[i] = found[k]
        return probs, mass

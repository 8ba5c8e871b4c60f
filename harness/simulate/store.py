"""Every simulator prediction ever made, in SQLite, so runs resume and explanations shared by submissions
are scored once.

Keyed by (model_key, prompt_version, sha256 of the raw explanation, context_id): anything that changes a
prediction must change one of these (the model key carries revision and dtype; the context id must
identify the tokens). The backend is not part of the key: backends agree within float tolerance.

Each row carries a digest over its key and value (`row_digest`), checked on every read: a value changed
in place (SQLite's own integrity_check cannot see that) is reported in one line, recomputed and
rewritten, never used. Rows written before digests existed are recomputed the same way, once. A store
SQLite cannot read stops the run with one line saying how to start afresh; it is never bypassed.
The digest detects changes made by anything that does not know it (a disk, a script, a hand edit); it is
not a signature, and whoever can rewrite the store can rewrite the digests too.
"""

from __future__ import annotations

import hashlib
import sqlite3
import struct
import sys
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
    digest BLOB,
    PRIMARY KEY (model_key, prompt_version, explanation_sha256, context_id)
) WITHOUT ROWID
"""

_IN_CHUNK = 500   # below SQLite's default limit of host parameters per statement


def row_digest(model_key: str, prompt_version: str, exp_sha: str, ctx_id: str, probs: bytes, mass: float) -> bytes:
    """16 bytes of BLAKE2b over a row's key and value: the key fields are NUL-separated (no field can hold a
    NUL and shift the boundary unseen), the answer mass as the 8-byte double SQLite stores."""
    return _row_digest(_digest_prefix(model_key, prompt_version, exp_sha), ctx_id, probs, mass)


def _digest_prefix(model_key: str, prompt_version: str, exp_sha: str):
    # Hashed once per explanation: a read checks thousands of rows that share these three fields.
    h = hashlib.blake2b(digest_size=16)
    h.update("\0".join((model_key, prompt_version, exp_sha, "")).encode("utf-8", "surrogatepass"))
    return h


def _row_digest(prefix, ctx_id: str, probs: bytes, mass: float) -> bytes:
    h = prefix.copy()
    h.update(ctx_id.encode("utf-8", "surrogatepass") + b"\0" + probs + _DOUBLE.pack(mass))
    return h.digest()


_DOUBLE = struct.Struct("<d")


class PredictionStore:
    def __init__(self, path: Path | str, timeout_s: float = 60.0):
        self.path = Path(path)
        self.timeout_s = float(timeout_s)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        try:
            with self._connect() as con:
                con.execute("PRAGMA journal_mode=WAL")
                con.execute(_SCHEMA)
                if "digest" not in {r[1] for r in con.execute("PRAGMA table_info(predictions)")}:
                    try:   # a store from before digests: its rows read as unverified and are recomputed
                        con.execute("ALTER TABLE predictions ADD COLUMN digest BLOB")
                    except sqlite3.OperationalError as e:
                        if "duplicate column" not in str(e):   # another process added it first: fine
                            raise
        except sqlite3.DatabaseError as e:
            raise HarnessError(f"prediction store {self.path} is unreadable ({e}): move it away to start afresh") from e

    def _damaged(self, e: sqlite3.DatabaseError) -> HarnessError:
        return HarnessError(f"prediction store {self.path} is damaged ({e}) — move it away to start afresh (every "
                            f"prediction is then recomputed), or salvage it with `sqlite3 {self.path} .recover`")

    def _connect(self) -> sqlite3.Connection:
        # A connection per call keeps the store safe to use from forked workers and threads.
        con = sqlite3.connect(self.path, timeout=self.timeout_s, isolation_level=None)
        con.execute(f"PRAGMA busy_timeout={int(self.timeout_s * 1000)}")
        con.execute("PRAGMA synchronous=NORMAL")
        return con

    def get_many(self, model_key: str, prompt_version: str, keys: Iterable[tuple[str, str]],
                 failed: list[tuple[str, str]] | None = None, unverified: list[tuple[str, str]] | None = None,
                 ) -> dict[tuple[str, str], tuple[np.ndarray, float]]:
        """keys are (explanation_sha256, context_id); absent keys are absent from the result.

        A row whose digest does not match its content is left out and its key appended to `failed`; a row
        with no digest (an older harness wrote it) is left out and appended to `unverified`.
        """
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
                        "SELECT context_id, probs, digit_mass, digest FROM predictions WHERE model_key=? AND "
                        f"prompt_version=? AND explanation_sha256=? AND context_id IN ({','.join('?' * len(chunk))})",
                        [model_key, prompt_version, exp_sha, *chunk],
                    ).fetchall()
                    prefix = _digest_prefix(model_key, prompt_version, exp_sha)
                    for ctx_id, blob, m, digest in rows:
                        if digest is None:
                            if unverified is not None:
                                unverified.append((exp_sha, ctx_id))
                            continue
                        if (not isinstance(blob, bytes) or not isinstance(m, float)
                                or digest != _row_digest(prefix, ctx_id, blob, m)):
                            if failed is not None:
                                failed.append((exp_sha, ctx_id))
                            continue
                        found[(exp_sha, ctx_id)] = (np.frombuffer(blob, dtype=np.float32).copy(), m)
        except sqlite3.DatabaseError as e:
            if type(e) is not sqlite3.DatabaseError:   # locked, disk I/O...: not damage, said as it is
                raise
            raise self._damaged(e) from None
        finally:
            con.close()
        return found

    def put_many(self, model_key: str, prompt_version: str,
                 rows: Iterable[tuple[str, str, np.ndarray, float]],
                 replace: set[tuple[str, str]] | frozenset = frozenset()) -> None:
        """rows are (explanation_sha256, context_id, probs [K answers], answer mass); one transaction, first write
        wins, except for keys in `replace` (rows that failed their check or had no digest): those are overwritten."""
        now = time.time()
        data = []
        n_answers = len(PROMPT_VERSIONS[prompt_version].answers) if prompt_version in PROMPT_VERSIONS else None
        for exp_sha, ctx_id, probs, m in rows:
            p = np.ascontiguousarray(probs, dtype=np.float32).reshape(-1)
            if p.shape[0] != (n_answers or p.shape[0]) or p.shape[0] < 2:
                raise ValueError(f"prompt {prompt_version} has {n_answers} answers, got probabilities of shape {p.shape}")
            blob, mass = p.tobytes(), float(m)
            data.append((model_key, prompt_version, exp_sha, ctx_id, blob, mass, now,
                         row_digest(model_key, prompt_version, exp_sha, ctx_id, blob, mass)))
        if not data:
            return
        con = self._connect()
        try:
            # IMMEDIATE takes the write lock up front, so concurrent writers queue on busy_timeout instead
            # of failing on a lock upgrade.
            con.execute("BEGIN IMMEDIATE")
            try:
                con.executemany("INSERT OR IGNORE INTO predictions VALUES (?,?,?,?,?,?,?,?)",
                                [r for r in data if (r[2], r[3]) not in replace])
                con.executemany("INSERT OR REPLACE INTO predictions VALUES (?,?,?,?,?,?,?,?)",
                                [r for r in data if (r[2], r[3]) in replace])
                con.execute("COMMIT")
            except BaseException:
                con.execute("ROLLBACK")
                raise
        except sqlite3.DatabaseError as e:
            if type(e) is not sqlite3.DatabaseError:
                raise
            raise self._damaged(e) from None
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
        failed: list[tuple[str, str]] = []
        unverified: list[tuple[str, str]] = []
        found = self.store.get_many(self.model_key, self.prompt_version, keys, failed, unverified)
        replace = set(failed) | set(unverified)
        if failed:
            _warn(f"prediction store {self.store.path}: {len(failed):,} stored predictions fail their integrity "
                  "check (changed since they were written); recomputing and rewriting them — if this recurs, "
                  "something is changing the store: move it away")
        if unverified:
            _warn(f"prediction store {self.store.path}: {len(unverified):,} stored predictions predate integrity "
                  "digests; recomputing them once (rewritten with digests)")
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
                                [(*keys[i], p[j], float(m[j])) for j, i in enumerate(rows)], replace)
            for j, i in enumerate(rows):
                found[keys[i]] = (p[j], float(m[j]))
            self.n_computed += len(rows)
            if progress is not None:
                progress(sum(n_rows[keys[i]] for i in rows))
        for i, k in enumerate(keys):
            probs[i], mass[i] = found[k]
        return probs, mass


def _warn(msg: str) -> None:
    from harness.io import one_line

    print(f"warning: {one_line(msg)}", file=sys.stderr)

"""The task corpus as one token stream: local token files, local text files, or a pinned hub dataset.

Text files may be .txt, .jsonl, .jsonl.zst (the Pile's own format) or .parquet. A hub corpus is read from
the local Hugging Face cache when its `data_files` file is there (same file, same order as streaming it),
else streamed from the Hub; a `path` next to a hub source (`--override corpus.path=FILE`) reads a local
copy of that file instead, or a leading slice of it: documents are read from the start and reading stops
once the splits have enough tokens, so a prefix holding enough documents gives the same tokens.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from harness.errors import HarnessError
from harness.task.spec import TaskSpec


def _tokenize_docs(docs, tokenizer, need_tokens: int) -> np.ndarray:
    eos = tokenizer.eos_token_id if tokenizer.eos_token_id is not None else 0
    out: list[int] = []
    for doc in docs:
        if not isinstance(doc, str) or not doc.strip():
            continue
        out.extend(tokenizer(doc, add_special_tokens=False)["input_ids"])
        out.append(eos)
        if need_tokens and len(out) >= need_tokens:
            break
    return np.asarray(out, dtype=np.int64)


def _open_text(path: Path):
    if path.suffix == ".zst":
        import io

        import zstandard

        return io.TextIOWrapper(zstandard.ZstdDecompressor().stream_reader(open(path, "rb"), closefd=True),
                                encoding="utf-8")
    return open(path, encoding="utf-8")


def _local_text_docs(path: Path, field: str):
    if path.name.endswith((".jsonl", ".jsonl.zst", ".json.zst")):
        with _open_text(path) as f:
            for n, line in enumerate(f, 1):
                if not line.strip():
                    continue
                try:
                    row = json.loads(line)
                except json.JSONDecodeError as e:
                    raise HarnessError(f"{path}: line {n} is not valid JSON ({e.msg})") from None
                if field not in row:
                    raise HarnessError(f"{path}: line {n} has no field {field!r} (set [corpus] text_field)")
                yield row[field]
    elif path.suffix == ".parquet":
        import pyarrow.parquet as pq  # arrives with `datasets`

        pf = pq.ParquetFile(path)
        if field not in pf.schema_arrow.names:
            raise HarnessError(f"{path}: no column {field!r} (set [corpus] text_field)")
        for batch in pf.iter_batches(columns=[field], batch_size=1024):  # a shard can be GBs: never load it whole
            yield from batch.column(0).to_pylist()
    else:
        yield path.read_text()


def _hub_docs(spec: TaskSpec):
    c = spec.corpus
    from harness.hub import cached_file, hub_offline, hub_reachable, short_revision

    local = cached_file(c.dataset, c.data_files, c.revision, "dataset") if c.data_files else None
    if local is not None:
        yield from _local_text_docs(local, c.text_field)
        return
    if hub_offline() or not hub_reachable():
        raise HarnessError(
            f"corpus {c.dataset}@{short_revision(c.revision)} {c.data_files or c.split} is not in the local Hugging Face "
            "cache and the Hub cannot be reached: pre-download it into HF_HOME (`hf download "
            f"{c.dataset} {c.data_files} --repo-type dataset --revision {c.revision}`), or point the task at a "
            "local copy or leading slice of it with --override corpus.path=/path/to/file (.jsonl, .jsonl.zst, .parquet)"
        )
    try:
        import datasets
    except ImportError:
        raise HarnessError("this task reads a Hugging Face dataset: pip install 'harness[hub]'") from None
    try:
        ds = datasets.load_dataset(
            c.dataset, c.config or None, revision=c.revision, split=c.split,
            data_files=c.data_files or None, streaming=True,
        )
        for row in ds:
            yield row[c.text_field]
    except HarnessError:
        raise
    except Exception as e:  # offline, missing revision, gated dataset...
        raise HarnessError(
            f"cannot read dataset {c.dataset}@{c.revision[:12]} ({type(e).__name__}: {str(e).splitlines()[0][:160]}); "
            "connect to the Hub, pre-download it into HF_HOME, or point the task at a local copy with "
            "--override corpus.path=/path/to/file (.jsonl, .jsonl.zst or .parquet)"
        ) from None


def load_token_stream(spec: TaskSpec, tokenizer, need_tokens: int, cache_dir: Path) -> np.ndarray:
    c = spec.corpus
    if c.source == "local-tokens":
        path = spec.resolve(c.path)
        if not path.is_file():
            raise HarnessError(f"{spec.toml_path} [corpus]: token file {path} is missing")
        with np.load(path) as z:
            if "tokens" not in z:
                raise HarnessError(f"{path}: expected an array named `tokens`")
            tokens = z["tokens"]
        if c.offset >= len(tokens):
            raise HarnessError(f"{spec.toml_path} [corpus]: offset {c.offset} is past the end of {path} ({len(tokens)} tokens)")
        return tokens[c.offset:].astype(np.int64)
    cached = cache_dir / "corpus_tokens.npy"
    if cached.is_file():
        return np.load(cached)
    if c.source == "local-text" or (c.source == "hub" and c.path):
        path = spec.resolve(c.path)
        if not path.is_file():
            what = f"a copy of {c.dataset}/{c.data_files or c.split}" if c.source == "hub" else "the text file"
            raise HarnessError(f"{spec.toml_path} [corpus]: {path} is missing; corpus.path must name {what} "
                               "(.txt, .jsonl, .jsonl.zst or .parquet)")
        docs = _local_text_docs(path, c.text_field)
    else:
        docs = _hub_docs(spec)
    if c.max_documents:
        import itertools

        docs = itertools.islice(docs, c.max_documents)
    tokens = _tokenize_docs(docs, tokenizer, need_tokens)
    tmp = cached.with_suffix(".tmp.npy")
    np.save(tmp, tokens)
    tmp.replace(cached)
    return tokens

"""Shared-prefix transformers engine: each context's prompt prefix runs once, its suffixes run in batches.

Per predict call the instruction head (identical for every context) is run once. Contexts then go in chunks
of about `prefix_batch_tokens` context tokens: the chunk's context tokens run as one right-padded batch on
copies of the head's cache, and the chunk's suffixes are cut into batches of similar length
(`plan_batches`) that mix contexts, each row attending to its own context's prefix (padding masked). A
cascade scores a context against a few explanations only (~5 on the CE task), so one context at a time its
products would have ~60 rows, where a float32 GEMM runs well below its large-matrix rate; chunked, the
same FLOPs run 1.6-1.7x faster on the CE task's pairs (benchmarks/RESULTS.md). A context scored against one
explanation only (detection, the gaming suite) shares nothing with other pairs beyond the head, so those
pairs run together: the context tokens and the explanation suffix as one "suffix" per row against the
head's cache, in batches across contexts. The suffix pass reads the prefixes through
`shared_prefix_attention` (one matmul of all rows against a single prefix, or a gathered one per row when
contexts mix); models whose attention needs more fall back to one context at a time with the cache
repeated along the batch. Only the hidden state at each row's last real token goes through the LM head.
"""

from __future__ import annotations

import contextvars
import copy
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

from harness.simulate.base import Progress, SimContext, answers_from_logits, context_groups, readout_dtype
from harness.simulate.plain import TorchSimulatorBase


def _returned_cache(out):
    cache = getattr(out, "cache", None)
    return cache if cache is not None else getattr(out, "past_key_values", None)


# What one more suffix batch costs beyond its tokens (dispatch, the head, the cache views), counted in padded
# token positions: the batch planner trades it against padding.
BATCH_OVERHEAD_TOKENS = 16


# Context tokens per prefix batch when contexts are scored against a few explanations each (a cascade's
# pairs): enough rows for the GEMMs to run near their large-matrix rate, little padding memory.
PREFIX_BATCH_TOKENS = 2048


def _chunks(lengths: Sequence[int], budget: int) -> list[list[int]]:
    """Consecutive runs of indices whose lengths sum to at most `budget` (a longer one alone)."""
    out: list[list[int]] = []
    total = 0
    for i, n in enumerate(lengths):
        if out and total + n <= budget:
            out[-1].append(i)
            total += n
        else:
            out.append([i])
            total = n
    return out


def plan_batches(lengths, max_batch: int, overhead: float = BATCH_OVERHEAD_TOKENS) -> list[np.ndarray]:
    """Cut suffixes into batches of at most `max_batch` that minimise padded positions + overhead per batch.

    Sorted by length, the best batches are contiguous runs; a dynamic programme over the cut points finds
    the cheapest split (a batch costs rows x its longest suffix + `overhead`). Returns index arrays into
    `lengths`, each batch's suffixes of similar length. With one fixed batch size, a context with suffixes
    of 34 to 51 tokens pads ~25% of all positions; planned, a few percent.
    """
    lengths = np.asarray(lengths, dtype=np.int64)
    n = len(lengths)
    if n == 0:
        return []
    order = np.argsort(lengths, kind="stable")
    srt = lengths[order].astype(np.float64)
    max_batch = max(1, int(max_batch))
    best = np.zeros(n + 1)
    cut = np.zeros(n + 1, dtype=np.int64)
    for j in range(1, n + 1):
        i = np.arange(max(0, j - max_batch), j)
        cost = best[i] + (j - i) * srt[j - 1] + overhead
        k = int(np.argmin(cost))
        best[j], cut[j] = cost[k], i[k]
    out = []
    j = n
    while j > 0:
        out.append(order[cut[j]:j])
        j = int(cut[j])
    return out[::-1]


def _plain_layers(cache) -> bool:
    """Every layer a full-attention DynamicLayer holding keys (what the shared-prefix path reads)."""
    from transformers.cache_utils import DynamicLayer

    layers = getattr(cache, "layers", None)
    return bool(layers) and all(type(layer) is DynamicLayer and (keys := getattr(layer, "keys", None)) is not None
                                and keys.numel() for layer in layers)


def _repeat_cache(cache, n: int):
    """A cache holding `n` copies of a batch-1 cache, leaving the original untouched.

    Plain dynamic layers get expanded views (no copy: the suffix pass concatenates onto them, which
    materialises the keys once); any other layer type gets a deep copy and the library's own repeat.
    """
    from transformers.cache_utils import DynamicLayer

    if all(type(layer) is DynamicLayer for layer in getattr(cache, "layers", [None])):
        out = copy.copy(cache)
        out.layers = []
        for layer in cache.layers:
            new = copy.copy(layer)
            keys = getattr(layer, "keys", None)
            if getattr(layer, "is_initialized", False) and keys is not None and keys.numel():
                new.keys = layer.keys.expand(n, *layer.keys.shape[1:])
                new.values = layer.values.expand(n, *layer.values.shape[1:])
            out.layers.append(new)
        return out
    out = copy.deepcopy(cache)
    out.batch_repeat_interleave(n)
    return out


# ------------------------------------------------------------------ shared-prefix attention
#
# In a suffix batch every row attends to the same context prefix. The library path repeats the prefix
# keys/values along the batch, concatenates the suffix's onto them (a copy per row and layer), repeats them
# again per query head (GQA) and runs a masked attention kernel. Here the suffix pass runs without a cache and
# a registered attention function attends in two parts: all rows' queries against the one shared prefix as a
# single matmul per key/value head, and each row's queries against its own suffix keys (causal); the two
# parts are merged with a common softmax normaliser. Same maths, no copies of the prefix.
#
# The function is selected by setting the model config's attention implementation to its name for the
# duration of one suffix forward only; masks are not built for an unknown implementation name, which is what
# this needs (suffixes are right-padded, so causality alone keeps real tokens off the padding).

SHARED_PREFIX_ATTENTION = "harness_shared_prefix"
_prefix_kv: contextvars.ContextVar = contextvars.ContextVar("harness_prefix_kv", default=None)


class _Unsupported(Exception):
    """The model's attention asks for something this function does not do (sliding window, softcap, sinks)."""


@dataclass(frozen=True)
class _PrefixState:
    """What a suffix pass attends to besides its own tokens: per layer (keys, values) [B, Hkv, P, d] of B
    prefixes; `rows` [n]: which prefix each suffix row extends (None: B = 1, every row the same); `pad` [n, P]:
    True at positions past that row's prefix (right padding of a batch of prefixes; None: none)."""
    kv: list
    rows: torch.Tensor | None = None
    pad: torch.Tensor | None = None


def shared_prefix_attention(module, query, key, value, attention_mask, scaling=None, dropout=0.0, **kwargs):
    """query [n, H, s, d]; key/value [n, Hkv, s, d] of the suffix only; the prefixes in the context variable."""
    state = _prefix_kv.get()
    if state is None:  # the name is set but no suffix pass is running: behave as plain sdpa would
        from transformers.integrations.sdpa_attention import sdpa_attention_forward
        return sdpa_attention_forward(module, query, key, value, attention_mask, dropout=dropout,
                                      scaling=scaling, **kwargs)
    if (dropout or attention_mask is not None or not getattr(module, "is_causal", True)
            or any(kwargs.get(k) is not None for k in ("sliding_window", "softcap", "s_aux", "head_mask"))):
        raise _Unsupported("attention options beyond plain causal attention")
    layer = getattr(module, "layer_idx", None)
    if layer is None or not 0 <= layer < len(state.kv):
        raise _Unsupported("attention module without a usable layer index")
    kp, vp = state.kv[layer]                                 # [B, Hkv, P, d] each
    n, n_heads, s, d = query.shape
    n_kv = key.shape[1]
    if n_heads % n_kv or kp.shape[1] != n_kv or kp.shape[-1] != d or vp.shape[-1] != value.shape[-1]:
        raise _Unsupported("prefix cache does not match the attention heads")
    g = n_heads // n_kv
    p_len = kp.shape[2]
    scale = scaling if scaling is not None else d ** -0.5
    # Head h uses key/value head h // g (as transformers' repeat_kv): queries as [n, Hkv, g*s, d].
    q = query.reshape(n, n_kv, g * s, d)
    acc = readout_dtype(query.dtype)
    if state.rows is None:
        # One prefix for every row: a single matmul per key/value head over all rows' queries.
        qh = q.transpose(0, 1).reshape(n_kv, n * g * s, d)
        sp = torch.matmul(qh, kp[0].transpose(1, 2)).view(n_kv, n, g * s, p_len).transpose(0, 1).to(acc)
    else:
        kr, vr = kp.index_select(0, state.rows), vp.index_select(0, state.rows)
        sp = torch.matmul(q, kr.transpose(2, 3)).to(acc)                               # [n, Hkv, g*s, P]
    ss = torch.matmul(q, key.transpose(2, 3)).to(acc)                                  # [n, Hkv, g*s, s]
    sp.mul_(scale)
    ss.mul_(scale)
    if state.pad is not None:
        sp.masked_fill_(state.pad[:, None, None, :], float("-inf"))
    pos = torch.arange(s, device=query.device)
    future = pos[None, :] > pos.repeat(g)[:, None]                                      # [g*s, s]
    ss.masked_fill_(future, float("-inf"))
    m = torch.maximum(sp.amax(-1), ss.amax(-1)).unsqueeze(-1)                          # [n, Hkv, g*s, 1]
    ep = torch.exp(sp.sub_(m))
    es = torch.exp(ss.sub_(m))
    denom = ep.sum(-1, keepdim=True) + es.sum(-1, keepdim=True)
    if state.rows is None:
        epf = ep.to(vp.dtype).transpose(0, 1).reshape(n_kv, n * g * s, p_len)
        out = torch.matmul(epf, vp[0]).view(n_kv, n, g * s, -1).transpose(0, 1)
    else:
        out = torch.matmul(ep.to(vr.dtype), vr)
    out = out + torch.matmul(es.to(value.dtype), value)
    out = (out / denom.to(out.dtype)).to(query.dtype)
    d_v = out.shape[-1]
    # -> [n, s, H, d_v], as the library's attention functions return it.
    return out.reshape(n, n_kv, g, s, d_v).permute(0, 3, 1, 2, 4).reshape(n, s, n_heads, d_v), None


def _register_attention() -> bool:
    try:
        from transformers import AttentionInterface
    except ImportError:
        return False
    AttentionInterface.register(SHARED_PREFIX_ATTENTION, shared_prefix_attention)
    return True


class PrefixSimulator(TorchSimulatorBase):
    name = "transformers-prefix"

    def __init__(self, model, tokenizer, prompt_version: str, max_chars: int, model_key: str,
                 batch_size: int = 16, shared_prefix_attention: bool = True,
                 prefix_batch_tokens: int = PREFIX_BATCH_TOKENS):
        super().__init__(model, tokenizer, prompt_version, max_chars, model_key, batch_size)
        self.prefix_batch_tokens = max(1, int(prefix_batch_tokens))
        # Turned off for good the first time the model's attention needs more than it offers.
        self.shared_attention = bool(shared_prefix_attention) and _register_attention()
        self._head_ids = self.builder.head_ids
        self._head_kv = None
        from harness.model.patch import cache_kwarg

        self._cache_kw = cache_kwarg(self.base)
        self._model_cache_kw = cache_kwarg(model)

    def _run(self, ids: torch.Tensor, cache, start: int, attention_mask=None):
        n, s = ids.shape
        pos = torch.arange(start, start + s, device=self.device).unsqueeze(0).expand(n, s)
        out = self.base(input_ids=ids, attention_mask=attention_mask, position_ids=pos, use_cache=True,
                        **{self._cache_kw: cache})
        return out.last_hidden_state, _returned_cache(out)

    def _head_cache(self):
        """KV of the instruction head, computed once per simulator: every context extends a copy."""
        if not self._head_ids:
            return None
        if self._head_kv is None:
            ids = torch.tensor([self._head_ids], dtype=torch.long, device=self.device)
            self._head_kv = self._run(ids, None, 0)[1]
        return self._head_kv

    def _suffix_answers(self, cache, prefix_len: int, suffixes: list[list[int]]) -> tuple[np.ndarray, np.ndarray]:
        """(answer probs, answer mass) for each suffix appended to the cached prefix."""
        return self._answers(self._suffix_logits(cache, prefix_len, suffixes))

    def _answers(self, out: torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
        """(answer probs, answer mass) from `_suffix_logits`' output: logits, or the hidden state where the head
        is plain."""
        return self.read_out(out) if self.lm_head is not None else answers_from_logits(out, self.answer_ids)

    def _padded(self, seqs: list[list[int]]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Right-padded ids [n, width], their mask, and each row's last real position."""
        n, width = len(seqs), max(len(s) for s in seqs)
        ids = torch.full((n, width), self.pad_id, dtype=torch.long)
        mask = torch.zeros((n, width), dtype=torch.long)
        for i, s in enumerate(seqs):
            ids[i, :len(s)] = torch.tensor(s, dtype=torch.long)
            mask[i, :len(s)] = 1
        ids, mask = ids.to(self.device), mask.to(self.device)
        return ids, mask, mask.sum(dim=1) - 1

    def _suffix_logits(self, cache, prefix_len: int, suffixes: list[list[int]]) -> torch.Tensor:
        """Logits at each suffix's last token, or the final hidden state there where the head is plain."""
        ids, smask, last = self._padded(suffixes)
        n, width = ids.shape
        rows = torch.arange(n, device=self.device)
        if self.shared_attention and _plain_layers(cache):
            try:
                return self._shared_suffix_logits(cache, prefix_len, ids, rows, last)
            except _Unsupported:
                self.shared_attention = False
        attn = torch.cat([torch.ones((n, prefix_len), dtype=torch.long, device=self.device), smask], dim=1)
        batch_cache = _repeat_cache(cache, n)
        if self.lm_head is not None:
            hidden = self._run(ids, batch_cache, prefix_len, attn)[0]
            return hidden[rows, last]
        pos = (prefix_len + torch.arange(width, device=self.device)).unsqueeze(0).expand(n, width)
        out = self.model(input_ids=ids, attention_mask=attn, position_ids=pos, use_cache=True,
                         **{self._model_cache_kw: batch_cache})
        return out.logits[rows, last]

    def _shared_suffix_logits(self, cache, prefix_len: int, ids, rows, last) -> torch.Tensor:
        kv = [(layer.keys, layer.values) for layer in cache.layers]
        n, width = ids.shape
        pos = (prefix_len + torch.arange(width, device=self.device)).unsqueeze(0).expand(n, width)
        return self._attend_prefixes(_PrefixState(kv), ids, pos, rows, last)

    def _attend_prefixes(self, state: _PrefixState, ids, pos, rows, last) -> torch.Tensor:
        """Logits (or the final hidden state, where the head is plain) at each row's `last` token, the suffix
        pass reading its prefixes through `shared_prefix_attention`."""
        config = self.model.config
        previous = config._attn_implementation
        token = _prefix_kv.set(state)
        config._attn_implementation = SHARED_PREFIX_ATTENTION
        try:
            if self.lm_head is not None:
                hidden = self.base(input_ids=ids, position_ids=pos, use_cache=False).last_hidden_state
                return hidden[rows, last]
            return self.model(input_ids=ids, position_ids=pos, use_cache=False).logits[rows, last]
        finally:
            config._attn_implementation = previous
            _prefix_kv.reset(token)

    @torch.inference_mode()
    def _predict(self, contexts: Sequence[SimContext], explanations: Sequence[str], pairs: np.ndarray,
                 progress: Progress | None) -> tuple[np.ndarray, np.ndarray]:
        probs = np.zeros((len(pairs), len(self.answer_ids)), np.float32)
        mass = np.zeros(len(pairs), np.float32)
        head_cache = self._head_cache()
        n_head = len(self._head_ids)
        groups = context_groups(pairs)
        # Contexts with one pair: batched across contexts against the head (same FLOPs, bigger products).
        lone = [rows[0] for _, rows in groups if len(rows) == 1] if head_cache is not None else []
        if len(lone) > 1:
            self._lone_pairs(contexts, explanations, pairs, np.asarray(lone), head_cache, n_head, probs, mass,
                             progress)
            groups = [(c, rows) for c, rows in groups if len(rows) > 1]
        prefixes = [self._checked_prefix(contexts[c], n_head) for c, _ in groups]
        suffixes = [[self.builder.suffix(explanations[int(e)]) for e in pairs[rows, 1]] for _, rows in groups]
        # Shortest prefixes first: a prefix batch pads to its longest context, so similar lengths go together.
        by_length = np.argsort([len(p) for p in prefixes], kind="stable")
        for cut in _chunks([len(prefixes[i]) - n_head for i in by_length], self.prefix_batch_tokens):
            chunk = [int(by_length[i]) for i in cut]
            if len(chunk) > 1 and self.shared_attention:
                try:
                    self._many_contexts([prefixes[i] for i in chunk], [suffixes[i] for i in chunk],
                                        [groups[i][1] for i in chunk], head_cache, n_head, probs, mass, progress)
                    continue
                except _Unsupported:
                    self.shared_attention = False
            for i in chunk:
                ctx_ids = torch.tensor([prefixes[i][n_head:]], dtype=torch.long, device=self.device)
                cache = copy.deepcopy(head_cache) if head_cache is not None else None
                cache = self._run(ctx_ids, cache, n_head)[1]
                self._batched(cache, len(prefixes[i]), suffixes[i], groups[i][1], self.batch_size, probs, mass,
                              progress)
        return probs, mass

    def _many_contexts(self, prefixes: list[list[int]], suffixes: list[list[list[int]]], rows: list[np.ndarray],
                       head_cache, n_head: int, probs: np.ndarray, mass: np.ndarray,
                       progress: Progress | None) -> None:
        """Several contexts at once: their prefixes in one batch (right-padded after the shared head), then
        their suffixes in batches that mix contexts, each row attending to its own context's prefix.

        A context in a cascade run has a few suffixes only (~5 on the CE task): one context at a time, the
        products have ~60 rows, at which a float32 GEMM on a 2-core AVX2 CPU runs at ~60% of its rate at
        ~500 rows (benchmarks/RESULTS.md, Engine). Same FLOPs, bigger products."""
        b = len(prefixes)
        lens = torch.tensor([len(p) for p in prefixes], dtype=torch.long, device=self.device)
        ids, _, _ = self._padded([p[n_head:] for p in prefixes])
        cache = _repeat_cache(head_cache, b) if head_cache is not None else None
        cache = self._run(ids, cache, n_head)[1]
        if cache is None or not _plain_layers(cache):
            raise _Unsupported("the prefix batch's cache is not plain dynamic layers")
        kv = [(layer.keys, layer.values) for layer in cache.layers]
        p_len = int(kv[0][0].shape[2])
        owner = np.concatenate([np.full(len(r), i) for i, r in enumerate(rows)])
        out_rows = np.concatenate(rows)
        seqs = [s for per_context in suffixes for s in per_context]
        for sel in plan_batches([len(s) for s in seqs], self.batch_size):
            own = torch.as_tensor(owner[sel], dtype=torch.long, device=self.device)
            ids, _, last = self._padded([seqs[i] for i in sel])
            n, width = ids.shape
            start = lens[own].unsqueeze(1)
            pos = start + torch.arange(width, device=self.device).unsqueeze(0)
            pad = torch.arange(p_len, device=self.device).unsqueeze(0) >= start
            state = _PrefixState(kv, own, pad if bool(pad.any()) else None)
            out = self._attend_prefixes(state, ids, pos, torch.arange(n, device=self.device), last)
            probs[out_rows[sel]], mass[out_rows[sel]] = self._answers(out)
            if progress is not None:
                progress(len(sel))

    def _batched(self, cache, prefix_len: int, seqs: list[list[int]], rows: np.ndarray, max_batch: int,
                 probs: np.ndarray, mass: np.ndarray, progress: Progress | None) -> None:
        """Answers for `seqs` appended to the cached prefix, into `probs` / `mass` at `rows`; similar lengths
        share a batch, which wastes less on padding."""
        for sel in plan_batches([len(s) for s in seqs], max_batch):
            probs[rows[sel]], mass[rows[sel]] = self._suffix_answers(cache, prefix_len, [seqs[i] for i in sel])
            if progress is not None:
                progress(len(sel))

    def _checked_prefix(self, context: SimContext, n_head: int) -> list[int]:
        prefix = self.builder.prefix(context.text, context.last_token)
        if prefix[:n_head] != self._head_ids:  # cannot happen with PromptBuilder; guards a custom one
            raise RuntimeError("prompt prefix does not start with the template head")
        return prefix

    def _lone_pairs(self, contexts, explanations, pairs: np.ndarray, rows: np.ndarray, head_cache, n_head: int,
                    probs: np.ndarray, mass: np.ndarray, progress: Progress | None) -> None:
        """Pairs whose context is scored once: each row is context + explanation suffix after the shared head."""
        tails = [self._checked_prefix(contexts[int(c)], n_head)[n_head:] + self.builder.suffix(explanations[int(e)])
                 for c, e in pairs[rows]]
        # Rows are up to ~5x longer than a suffix: the batch limit is scaled so a batch holds about as many
        # token positions as a suffix batch would.
        per_batch = max(1, self.batch_size * 16 // max(16, int(np.mean([len(t) for t in tails]))))
        self._batched(head_cache, n_head, tails, rows, per_batch, probs, mass, progress)

"""Baseline explanation methods (`harness explain`): top-tokens, llm (Delphi-style), and the controls.

Explanations are built only from the activation_sample split, never from calibration, test or detection
contexts, so a baseline cannot have seen what it is scored on.
"""

from __future__ import annotations

import json
from collections import defaultdict
from pathlib import Path

import numpy as np
import torch

from harness.data.prepare import Prepared, encode_positions, prepare
from harness.data.select import TOP_EXAMPLES, top_examples_floor, top_examples_table
from harness.errors import HarnessError
from harness.io import cache_root, load_cached, load_npz, progress, save_npz, writable_file
from harness.model.patch import resolve_hookpoint
from harness.task.inputs import TaskInputs
from harness.task.spec import load_task
from harness.task.submission import save_submission

TOP_N = TOP_EXAMPLES  # top-activating examples per latent (top-tokens counts them all; llm shows the first few)


def top_examples(prep: Prepared, model, coder, device) -> dict[str, np.ndarray]:
    """Per rewritten latent, the TOP_N (block, position, value) of the activation sample, cached."""
    f = prep.cache_dir / "top_examples.npz"
    cached = load_cached(f, keys=("block", "pos", "value", "rewritten"))
    if cached is not None and cached["block"].shape[1] == TOP_N and np.array_equal(cached["rewritten"], prep.rewritten):
        return cached
    spec = prep.spec
    lo, T = spec.min_position(), spec.contexts.T
    # Only for a task prepared before prepare kept its top examples: prepare writes this file in its own pass.
    vals, inds = encode_positions(model, resolve_hookpoint(model, spec.coder.hookpoint), coder, spec.coder.kind,
                                  prep.splits["activation"], lo, T, "top-activating examples", device)
    floor = top_examples_floor(prep.table, prep.rewritten, TOP_N) if prep.table.exact else None
    save_npz(f, **top_examples_table(vals, inds, prep.rewritten, lo, TOP_N, floor))
    return load_npz(f)


def _quote(tok: str) -> str:
    return json.dumps(tok.strip() or tok)


def top_tokens_explanations(prep: Prepared, tokenizer, ex: dict) -> dict[int, str]:
    """'the tokens "X", "Y", ...': the 5 tokens a latent fires on most, weighted by activation.

    No preceding-token clause (the first version had one): it doubled the explanation's length, and a
    simulator's cost per prediction grows with the explanation's length.
    """
    out = {}
    blocks = prep.splits["activation"]
    for r, j in enumerate(prep.rewritten):
        fire: defaultdict[str, float] = defaultdict(float)  # summed activation per quoted token
        for b, p, v in zip(ex["block"][r], ex["pos"][r], ex["value"][r], strict=True):
            if b < 0:
                continue
            # Keyed by the quoted form: " of" and "of" read the same in an explanation.
            fire[_quote(tokenizer.decode([int(blocks[b, p])]))] += float(v)
        if not fire:
            out[int(j)] = ""
            continue
        # Stable sort: ties keep first-seen order, as Counter.most_common does.
        out[int(j)] = "the tokens " + ", ".join(sorted(fire, key=fire.__getitem__, reverse=True)[:5])
    return out


EXPLAINER_SYSTEM = (
    "You study one feature of a language model. You are shown text snippets; in each, the token where the feature "
    "is active is marked with [[ and ]]. Say what the marked tokens have in common: which words or symbols they "
    "are, or what kind of word. Answer with one short phrase and do not mention the brackets."
)


# The answer's opening is written for the model. Asked "what does the feature fire on?" under the cue "The feature
# fires on", Qwen2.5-Coder-1.5B described the markup ("tokens that are wrapped in [[ ]]") for 13 of 16 latents of
# the mini task; asked what the marked tokens have in common under this cue, it named a class for 7 of 8
# ("punctuation marks", "numbers", "verbs").
ANSWER_CUE = "The marked tokens are"


def llm_explanations(prep: Prepared, subject_tok, tokenizer, ex: dict, model, device, max_new_tokens: int = 24,
                     n_examples: int = 8) -> dict[int, str]:
    """Delphi-style: the explainer sees top-activating examples with the firing tokens marked; greedy decoding.

    `subject_tok` decodes the corpus tokens; `tokenizer` belongs to the explainer model.
    """
    blocks = prep.splits["activation"]
    prompts = {}
    for r, j in enumerate(prep.rewritten):
        lines = []
        for b, p in zip(ex["block"][r][:n_examples], ex["pos"][r][:n_examples], strict=True):
            if b < 0:
                continue
            start = max(0, p - 12)
            before = subject_tok.decode(blocks[b, start:p].tolist())
            lines.append(f"{len(lines) + 1}. {before}[[{subject_tok.decode([int(blocks[b, p])])}]]")
        if lines:
            msgs = [{"role": "system", "content": EXPLAINER_SYSTEM},
                    {"role": "user", "content": "Examples:\n" + "\n".join(lines) + "\n\nWhat do the marked tokens have in common?"}]
            prompts[int(j)] = tokenizer.apply_chat_template(msgs, add_generation_prompt=True, tokenize=False) + ANSWER_CUE
    out = {int(j): "" for j in prep.rewritten}
    items = list(prompts.items())
    pad_side = tokenizer.padding_side
    tokenizer.padding_side = "left"
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    try:
        with progress() as prog:
            t = prog.add_task("llm explainer", total=len(items))
            for s in range(0, len(items), 16):
                chunk = items[s:s + 16]
                enc = tokenizer([p for _, p in chunk], return_tensors="pt", padding=True, add_special_tokens=False)
                with torch.inference_mode():
                    gen = model.generate(**{k: v.to(device) for k, v in enc.items()}, max_new_tokens=max_new_tokens,
                                         do_sample=False, pad_token_id=tokenizer.pad_token_id)
                for (j, _), row in zip(chunk, gen[:, enc["input_ids"].shape[1]:], strict=True):
                    text = tokenizer.decode(row, skip_special_tokens=True).strip().splitlines()
                    answer = (text[0] if text else "").strip().rstrip(".")
                    answer = answer[4:] if answer.startswith("all ") else answer
                    out[j] = (f"tokens that are {answer}" if answer else "")[: prep.spec.simulator.max_explanation_chars]
                prog.advance(t, len(chunk))
    finally:
        tokenizer.padding_side = pad_side
    return out


def derangement(rng: np.random.Generator, n: int) -> np.ndarray:
    """A seeded permutation that moves every item (none for n < 2), so no latent keeps its own text by chance."""
    while True:
        perm = rng.permutation(n)
        if n < 2 or not np.any(perm == np.arange(n)):
            return perm


def shuffled_explanations(source: Path, latents: np.ndarray, seed: int, task_id: str, num_latents: int,
                          max_chars: int) -> tuple[dict[int, str], str]:
    """A real method's explanations permuted across latents: same texts, broken link to the latent."""
    from harness.task.submission import load_submission

    sub = load_submission(source, task_id=task_id, num_latents=num_latents, max_chars=max_chars)
    keys = [int(j) for j in latents if int(j) in sub.explanations]
    if len(keys) < 2:
        raise HarnessError(f"{source}: needs at least 2 explanations of rewritten latents to shuffle")
    rng = np.random.default_rng(seed)
    perm = derangement(rng, len(keys))
    return {keys[i]: sub.explanations[keys[p]] for i, p in enumerate(perm)}, sub.method


def run_explain(task: str, method: str, output: Path, overrides=(), seed: int = 0, source: str | None = None,
                device: str = "auto") -> Path:
    spec = load_task(task, list(overrides))
    writable_file(output, "output")
    inputs = TaskInputs(spec, device)
    prep = prepare(spec, inputs=inputs)
    dev = inputs.device
    desc = ""
    if method == "empty":
        expl = {int(j): "" for j in prep.rewritten}
        desc = "control: every explanation is empty"
    elif method == "shuffled":
        if not source:
            raise HarnessError("explain --method shuffled needs --submission FILE (the submission to permute)")
        expl, src_method = shuffled_explanations(Path(source), prep.rewritten, seed, spec.id, prep.num_latents,
                                                 spec.simulator.max_explanation_chars)
        desc = f"control: the explanations of {src_method} ({Path(source).name}) permuted across latents, seed {seed}"
        method = f"shuffled-{src_method}"
    else:
        model, tok = inputs.subject()
        ex = top_examples(prep, model, inputs.coder(), dev)
        if method == "top-tokens":
            expl = top_tokens_explanations(prep, tok, ex)
            desc = f"the 5 tokens each latent fires on most (activation-weighted, top {TOP_N} examples of the activation sample)"
        elif method == "llm":
            from harness.model.load import load_model

            ref = spec.simulator_ref()  # the task's default LLM doubles as the explainer
            emodel, etok = (model, tok) if ref == spec.subject_ref() else load_model(ref, spec.folder, cache_root(), device=dev)
            expl = llm_explanations(prep, tok, etok, ex, emodel, dev)
            desc = f"Delphi-style explainer prompt on {ref.key()}, greedy, top 8 examples with firing tokens marked"
        else:
            raise HarnessError(f"unknown explanation method {method!r}: use top-tokens, llm, empty or shuffled")
    sub = {"task": spec.id, "method": method, "description": desc,
           "explanations": {str(j): e for j, e in sorted(expl.items())}, "scores": None}
    return save_submission(sub, output)

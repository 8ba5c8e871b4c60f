"""A token corpus written by the subject model itself, so that a task needs no downloaded data set.

The model continues each of the project's own "starts" (`STARTS`: the openings of prose, news, dialogue,
code in several languages, lists, recipes, poems, e-mails, maths, tables, JSON, ...) by sampling
(temperature `CorpusConfig.temperature`, nucleus `top_p`), with a fixed seed per chunk. Every chunk of
`samples_per_chunk` samples is generated as one left-padded batch and saved as its own compressed file
under the work folder, so an interrupted build resumes where it stopped and a chunk that is deleted is
regenerated identically (same model, same software, same machine type).

Layout of the final corpus (`corpus.npz`, key `tokens`, uint16):

    [train chunk 0][train chunk 1] ... [train chunk n-1] | [eval chunk 0] ... [eval chunk m-1]
                                                          ^ eval_start (also stored in the npz)

A chunk is the concatenation of its samples, each `start tokens + generated tokens + eos`. The training
part (everything before `eval_start`) trains the coder; the evaluation part (the last ~10%, its own
chunks with their own seeds) is reserved for the task's calibration / test / detection contexts. The
two splits are generated interleaved (`chunk_order`), so a build stopped early holds both in about the
planned ratio, and `assemble_corpus` uses the longest complete prefix of each.
Both parts use the same list of starts (the generated continuations differ); contexts never overlap.

While a training chunk is generated, the MLP input and output of one layer can be captured for every
token that enters the corpus (`capture_layer`): the coder trainer then needs no second forward pass.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch

from harness.io import save_npz
from harness.model.hooks import Capture

# The project's own openings. Order matters (sample g of a split uses STARTS[g % len(STARTS)]):
# append new ones at the end only, and know that it changes the corpus.
STARTS: list[str] = [
    # --- narrative prose
    "Once upon a time, in a village at the edge of a great forest, there lived",
    "The rain had not stopped for three days when Maria finally opened the letter.",
    "It was the kind of morning when the whole city seems to hold its breath.",
    "He had promised himself he would never go back to the lighthouse, but",
    "Chapter 1\n\nThe train pulled into the station twenty minutes late.",
    "My grandmother kept a small tin box under her bed, and nobody knew what was inside",
    "The spaceship drifted silently past the rings of Saturn while the crew slept.",
    "When the last bookstore in town announced it was closing, the neighbours",
    "The detective looked at the muddy footprints and said,",
    "Nobody in the class expected the new student to",
    "The dragon opened one golden eye and",
    "In the summer of 1987, my father bought a rusty old boat",
    "The market was loud and crowded, full of the smell of spices and",
    "She typed the last line of code, pressed enter, and waited.",
    "The old man sat on the bench every afternoon, feeding the pigeons and",
    # --- news and reports
    "BREAKING NEWS: Officials confirmed on Tuesday that",
    "LONDON (Reuters) - Shares in European banks fell sharply on Monday after",
    "The city council voted 7-2 last night to approve a new plan for",
    "Scientists have discovered a new species of frog in the rainforests of",
    "Local residents gathered outside the town hall on Saturday to protest",
    "The national football team secured a dramatic 2-1 victory",
    "According to a report released this week by the World Health Organization,",
    "Heavy snowfall caused delays across the region as",
    "The company announced record profits for the third quarter, driven by",
    "Weather forecast for the weekend: Saturday will be",
    "In an interview with our reporter, the mayor explained",
    "Election results: with 95% of the votes counted,",
    # --- encyclopedia, textbook, explanation
    "Photosynthesis is the process by which green plants",
    "The French Revolution began in 1789 and",
    "A black hole is a region of spacetime where",
    "The human heart has four chambers:",
    "Introduction\n\nMachine learning is a field of study that",
    "The Amazon River is the largest river in the world by discharge volume,",
    "In economics, inflation refers to",
    "The mitochondria is often called the powerhouse of the cell because",
    "Volcanoes form when",
    "The Roman Empire was at its largest under the emperor Trajan, when",
    "Abstract: We study the problem of",
    "Water boils at 100 degrees Celsius at sea level, but at higher altitudes",
    "The theory of evolution by natural selection, first proposed by Charles Darwin,",
    "How does a computer store numbers? Inside the processor,",
    "The Great Wall of China stretches for thousands of kilometres across",
    # --- dialogue and chat
    "\"Where have you been?\" she asked.\n\"I",
    "Customer: Hi, I ordered a pair of shoes last week and they still haven't arrived.\nAgent:",
    "A: Did you see the game last night?\nB:",
    "Interviewer: Can you tell us a bit about your background?\nCandidate:",
    "Teacher: Who can tell me what the capital of Australia is?\nStudent:",
    "User: What is the best way to learn a new language?\nAssistant:",
    "Doctor: So, what brings you in today?\nPatient:",
    "Q: Why is the sky blue?\nA:",
    "JOHN: I can't believe you sold the car.\nMARY:",
    "Mom: Did you finish your homework?\nKid:",
    "Question: How many legs does a spider have?\nAnswer:",
    "User: Can you help me write a birthday message for my brother?\nAssistant: Of course!",
    # --- code: Python
    "def fibonacci(n):\n    \"\"\"Return the n-th Fibonacci number.\"\"\"\n",
    "import numpy as np\nimport matplotlib.pyplot as plt\n\n",
    "class Stack:\n    def __init__(self):\n",
    "# Read a CSV file and print the average of each column\nimport csv\n\n",
    "def is_prime(n: int) -> bool:\n",
    "from flask import Flask, request, jsonify\n\napp = Flask(__name__)\n\n",
    "for i in range(1, 101):\n    if i % 15 == 0:\n",
    "import torch\nimport torch.nn as nn\n\nclass MLP(nn.Module):\n",
    "def binary_search(arr, target):\n    lo, hi = 0, len(arr) - 1\n",
    "# Unit tests for the parser\nimport unittest\n\n",
    "with open(\"data.txt\") as f:\n    lines = f.readlines()\n",
    # --- code: other languages
    "function debounce(fn, delay) {\n  let timer;\n",
    "const express = require('express');\nconst app = express();\n\n",
    "#include <stdio.h>\n\nint main(void) {\n",
    "#include <vector>\n#include <iostream>\n\ntemplate <typename T>\n",
    "public class HelloWorld {\n    public static void main(String[] args) {\n",
    "fn main() {\n    let mut v = Vec::new();\n",
    "package main\n\nimport (\n\t\"fmt\"\n\t\"net/http\"\n)\n\n",
    "SELECT customer_id, COUNT(*) AS orders\nFROM orders\nWHERE",
    "<!DOCTYPE html>\n<html>\n<head>\n  <title>",
    "#!/bin/bash\n# Backup script\n\n",
    ".container {\n  display: flex;\n",
    "using System;\nusing System.Collections.Generic;\n\nnamespace",
    "<?php\n$conn = new mysqli($servername, $username, $password);\n",
    "library(ggplot2)\n\ndata <- read.csv(\"results.csv\")\n",
    "interface User {\n  id: number;\n  name: string;\n",
    "def quicksort(xs):\n",
    "git commit -m \"",
    "$ ls -la\ntotal 48\n",
    # --- structured data
    "{\n  \"name\": \"",
    "{\"id\": 1, \"title\": \"",
    "name,age,city\nAlice,34,Paris\n",
    "| Country | Capital | Population |\n|---|---|---|\n| France | Paris |",
    "<config>\n  <database>\n",
    "version: '3'\nservices:\n  web:\n",
    "[server]\nhost = \"127.0.0.1\"\nport = 8080\n",
    "Date,Open,High,Low,Close\n2021-03-01,",
    "# Project title\n\n## Installation\n\n",
    "- id: 1\n  task: buy milk\n  done: false\n",
    # --- lists, how-tos, recipes
    "Top 10 tips for a better night's sleep:\n1.",
    "Shopping list:\n- eggs\n- flour\n-",
    "Ingredients:\n- 2 cups flour\n- 1 teaspoon salt\n",
    "How to change a flat tire\n\nStep 1:",
    "Recipe: Classic Tomato Soup\n\nServes 4. Preparation time: 30 minutes.\n\n",
    "Things to pack for a camping trip:\n",
    "5 reasons why you should learn to play an instrument\n\n1.",
    "To-do list for Monday:\n1.",
    "Instructions: Preheat the oven to 180 degrees. In a large bowl,",
    "Packing checklist for moving house:\n",
    "The best way to clean a cast iron pan is",
    "Frequently Asked Questions\n\nQ: How long does shipping take?\nA:",
    # --- poetry and song
    "Roses are red, violets are blue,",
    "The moon above the silent sea\n",
    "I wandered through the autumn leaves,\n",
    "Haiku:\nMorning frost on grass\n",
    "Verse 1:\nWalking down the empty road\n",
    "There once was a man from Peru\n",
    "O river, carry me away\n",
    # --- letters and e-mails
    "Dear Mr. Thompson,\n\nI am writing to apply for the position of",
    "Subject: Meeting rescheduled\n\nHi team,\n\n",
    "Hi Sarah,\n\nThanks so much for your help yesterday!",
    "To whom it may concern,\n\n",
    "Dear Customer,\n\nWe regret to inform you that",
    "Subject: Your order #48213 has shipped\n\nHello,\n\n",
    "Dear Grandma,\n\nI hope you are well.",
    # --- maths and reasoning
    "Problem: A train travels 120 km in 2 hours. What is its average speed?\nSolution:",
    "Let x be a real number such that 2x + 3 = 11. Then",
    "Theorem. For every integer n greater than 1,",
    "Calculate 17 * 23.\n17 * 23 =",
    "The derivative of f(x) = x^2 + 3x is",
    "Proof: Suppose, for contradiction, that",
    "If a rectangle has a length of 8 cm and a width of 5 cm, its area is",
    "Exercise 3. Solve the system of equations:\n",
    "1, 1, 2, 3, 5, 8, 13,",
    "Probability question: If you roll two dice, what is the probability that",
    "Convert 250 grams to ounces:",
    # --- reviews, ads, opinion, social
    "Review: ★★★★☆\nI bought this blender last month and",
    "I have been using this app for two weeks now, and honestly",
    "FOR SALE: Used bicycle in excellent condition.",
    "Opinion: Why every city needs more public parks\n\n",
    "Just finished my first marathon!!! ",
    "Hotel review: The room was clean, but",
    "Product description: This lightweight backpack is",
    "Movie review: The new science fiction film",
    "Restaurant review: We visited on a busy Friday night and",
    "Top comment: Honestly, I think",
    # --- instructions, legal, formal, misc
    "Terms and Conditions\n\n1. Acceptance of Terms.",
    "WARNING: Read all safety instructions before",
    "Meeting minutes - March 14\n\nAttendees:",
    "Dear diary,\n\nToday was",
    "Monday, 7:00 am. I woke up and",
    "Table of contents\n1. Introduction\n2.",
    "Lecture notes: Week 3 - Linear algebra\n\n",
    "Abstract\n\nClimate change poses significant risks to",
    "Travel guide: Three days in Kyoto\n\nDay 1:",
    "Job posting: Senior software engineer\n\nResponsibilities:",
    "Patient history: 45-year-old male presenting with",
    "Error: Traceback (most recent call last):\n  File \"main.py\", line 12, in <module>\n",
    "[INFO] 2024-05-01 12:00:01 Server started on port 8080\n",
    "Translate to French: \"Good morning, how are you?\"\n",
    "Timeline of the Space Race:\n1957 -",
    "Biography: Marie Curie was born in Warsaw in 1867.",
    "Sports: In the final minute of the match,",
    "Chess: After 1. e4 e5 2. Nf3 Nc6,",
    "Word of the day: serendipity (noun).",
    "Fun fact: Octopuses have three hearts and",
    "Tutorial: Getting started with Git\n\nFirst,",
    "Historical note: The printing press, invented by Johannes Gutenberg,",
    "Study guide: The water cycle\n\nEvaporation",
    "Interview transcript, recorded on 12 June:\n\n",
    "The following is a transcript of a podcast about",
    "Product manual: To turn on the device,",
    "Press release: Today we are excited to announce",
    "Horoscope for Leo: This week",
    "Letter to the editor:\n\nI am tired of",
    "A short story for children:\n\nBenny the bear",
    "Notes from the garden: the tomatoes are",
    "The following table shows the average monthly temperature in",
    "Summary of the book:",
    "Glossary\n\nAlgorithm: ",
    "Museum label: This painting, made in 1654,",
    "Commit message: Fix off-by-one error in",
    "Announcement: The library will be closed on",
]


@dataclass(frozen=True)
class CorpusConfig:
    """Everything that decides the corpus's tokens (written to the work folder's config.json)."""

    seed: int = 20261126
    samples_per_chunk: int = 64      # one left-padded batch per chunk
    max_new_tokens: int = 128       # short samples: the KV cache's per-step copies and attention stay cheap
    temperature: float = 0.9
    top_p: float = 0.95
    n_train_chunks: int = 123       # ~8.2k tokens a chunk: ~1.0M training tokens
    n_eval_chunks: int = 12         # ~110k tokens (~10%) for calibration / test / detection contexts
    dtype: str = "bfloat16"        # AMX/AVX512-BF16 CPUs run it ~3.5x faster than float32 (measured here)
    threads: int = 1                # torch threads per generating process (numerics depend on it)

    def chunk_seed(self, split: str, index: int) -> int:
        return self.seed + (0 if split == "train" else 1_000_000) + index

    def chunk_starts(self, split: str, index: int, n_starts: int) -> list[int]:
        """Indices into STARTS for the samples of a chunk (eval samples begin at an offset)."""
        offset = 0 if split == "train" else 37
        first = index * self.samples_per_chunk + offset
        return [(first + j) % n_starts for j in range(self.samples_per_chunk)]


def chunk_name(split: str, index: int) -> str:
    return f"{split}-{index:04d}"


def chunk_order(cfg: CorpusConfig) -> list[tuple[str, int]]:
    """Generation order: the two splits interleaved in proportion, an evaluation chunk first, so that a build
    stopped early holds a prefix of each split in about the planned ratio."""
    keys = [(i / cfg.n_eval_chunks, 0, "eval", i) for i in range(cfg.n_eval_chunks)]
    keys += [((i + 1) / cfg.n_train_chunks, 1, "train", i) for i in range(cfg.n_train_chunks)]
    return [(split, i) for _, _, split, i in sorted(keys)]


def sample_next(logits: torch.Tensor, temperature: float, top_p: float, generator: torch.Generator,
                prefilter: int = 1024) -> torch.Tensor:
    """Nucleus sampling, exact: the candidates are sorted among the top `prefilter` logits, and a row whose
    top `prefilter` hold less than `top_p` of the mass falls back to the full sort."""
    probs = torch.softmax(logits.float() / temperature, dim=-1)
    k = min(prefilter, probs.shape[-1])
    top_vals, top_idx = probs.topk(k, dim=-1, sorted=True)
    short = top_vals.sum(-1) < top_p
    out = torch.empty(probs.shape[0], dtype=torch.long)
    for r in range(probs.shape[0]):
        if bool(short[r]):
            vals, idx = probs[r].sort(descending=True)
        else:
            vals, idx = top_vals[r], top_idx[r]
        keep = (vals.cumsum(-1) - vals) < top_p      # the smallest prefix whose mass reaches top_p
        v = torch.where(keep, vals, torch.zeros_like(vals))
        choice = torch.multinomial(v / v.sum(), 1, generator=generator)
        out[r] = idx[choice[0]]
    return out


@torch.inference_mode()
def generate_samples(model, prompts: list[list[int]], *, cfg: CorpusConfig, seed: int, eos_id: int,
                     end_ids: set[int], pad_id: int, capture_layer: int | None = None):
    """Sample continuations of `prompts` in one left-padded batch.

    Returns (samples, captured): samples[i] = prompt + generated tokens (without the end token) + [eos_id];
    captured = (x, y) float32 [n, d] MLP input/output of `capture_layer` for every token fed to the model
    that belongs to a sample, or None. Rows follow the samples' tokens in order, sample by sample; a sample's
    final eos is never fed, so each sample contributes len(sample) - 1 rows.
    """
    import inspect

    from transformers import DynamicCache

    # transformers >= 5.2x names the cache argument `cache` (older: `past_key_values`).
    cache_kw = "cache" if "cache" in inspect.signature(model.forward).parameters else "past_key_values"
    gen = torch.Generator().manual_seed(seed)
    B = len(prompts)
    P = max(len(p) for p in prompts)
    ids = torch.full((B, P), pad_id, dtype=torch.long)
    mask = torch.zeros((B, P), dtype=torch.long)
    for i, p in enumerate(prompts):
        ids[i, P - len(p):] = torch.tensor(p, dtype=torch.long)
        mask[i, P - len(p):] = 1
    pos = (mask.cumsum(-1) - 1).clamp(min=0)

    cap = None
    if capture_layer is not None:
        cap = Capture(model.model.layers[capture_layer].mlp)
    xs, ys, owner = [], [], []
    try:
        cache = DynamicCache(config=model.config)
        out = model(input_ids=ids, attention_mask=mask, position_ids=pos, use_cache=True, logits_to_keep=1,
                    **{cache_kw: cache})
        if cap is not None:
            assert cap.x is not None and cap.y is not None
            sel = mask.bool()
            xs.append(cap.x[sel].float())
            ys.append(cap.y[sel].float())
            owner.append(torch.nonzero(sel)[:, 0])
        generated: list[list[int]] = [[] for _ in range(B)]
        finished = torch.zeros(B, dtype=torch.bool)
        next_pos = pos[:, -1:] + 1
        for step in range(cfg.max_new_tokens):
            tok = sample_next(out.logits[:, -1, :], cfg.temperature, cfg.top_p, gen)
            for i in range(B):
                if not finished[i]:
                    t = int(tok[i])
                    if t in end_ids:
                        finished[i] = True
                    else:
                        generated[i].append(t)
            last = step == cfg.max_new_tokens - 1
            # with capture, the last sampled tokens are fed once more so that they get activations too
            if bool(finished.all()) or (last and cap is None):
                break
            feed = torch.where(finished, torch.full_like(tok, pad_id), tok)
            alive = ~finished
            mask = torch.cat([mask, torch.ones((B, 1), dtype=torch.long)], dim=1)
            out = model(input_ids=feed[:, None], attention_mask=mask, position_ids=next_pos, use_cache=True,
                        **{cache_kw: cache})
            next_pos = next_pos + 1
            if cap is not None:
                assert cap.x is not None and cap.y is not None
                xs.append(cap.x[:, 0][alive].float())
                ys.append(cap.y[:, 0][alive].float())
                owner.append(torch.nonzero(alive)[:, 0])
            if last:
                break
    finally:
        if cap is not None:
            cap.remove()
    samples = [list(p) + g + [eos_id] for p, g in zip(prompts, generated, strict=True)]
    captured = None
    if cap is not None:
        # rows were captured step by step; reorder them sample by sample (each in token order)
        order = torch.sort(torch.cat(owner), stable=True).indices
        captured = (torch.cat(xs)[order], torch.cat(ys)[order])
    return samples, captured


def save_acts(path: Path, x: torch.Tensor, y: torch.Tensor) -> None:
    from safetensors.torch import save_file

    tmp = path.with_name(path.name + ".tmp")
    save_file({"x": x.to(torch.bfloat16).contiguous(), "y": y.to(torch.bfloat16).contiguous()}, str(tmp))
    os.replace(tmp, path)


def _write_config(work_dir: Path, cfg: CorpusConfig, extra: dict) -> None:
    """Record the config; refuse to mix chunks of a different config in one work folder."""
    path = work_dir / "config.json"
    want = {**asdict(cfg), **extra}
    # The chunk counts decide how many chunks exist, not what any chunk holds: a corpus can grow.
    counts = ("n_train_chunks", "n_eval_chunks")
    strip = lambda d: {k: v for k, v in d.items() if k not in counts}  # noqa: E731
    if path.is_file():
        have = json.loads(path.read_text())  # read once: another worker may rewrite it meanwhile
        if have == want:
            return
        if strip(have) != strip(want):
            from harness.errors import HarnessError

            raise HarnessError(f"{path} was written with another corpus config ({have}); use a new work "
                               f"folder or delete it")
    work_dir.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f"config.json.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(want, indent=1, sort_keys=True))
    os.replace(tmp, path)


def starts_sha256(starts: list[str]) -> str:
    return hashlib.sha256(json.dumps(starts).encode()).hexdigest()


def acts_dir(work_dir: Path, layer: int) -> Path:
    """Where the MLP input/output of `layer` is kept per training chunk: one folder per layer, so that a
    coder for another layer can never train on a different layer's activations."""
    return Path(work_dir) / "acts" / f"layers.{layer}.mlp"


def generate_chunks(model, tokenizer, work_dir: Path, cfg: CorpusConfig, *, starts: list[str] = STARTS,
                    capture_layer: int | None = None, only: list[tuple[str, int]] | None = None,
                    deadline: float | None = None, progress=None, log=print) -> list[tuple[str, int]]:
    """Generate every missing chunk (in `chunk_order`, or just `only`); returns the chunks now present.

    Chunks already on disk are skipped. With `capture_layer`, training chunks also get
    `acts/layers.<L>.mlp/<chunk>.safetensors` (bf16 MLP input `x` / output `y` of that layer). Stops before starting a
    new chunk once `time.time() > deadline`.
    """
    import time

    work_dir = Path(work_dir)
    _write_config(work_dir, cfg, {"starts_sha256": starts_sha256(starts), "n_starts": len(starts)})
    (work_dir / "chunks").mkdir(parents=True, exist_ok=True)
    if capture_layer is not None:
        acts_dir(work_dir, capture_layer).mkdir(parents=True, exist_ok=True)
    eos_id = tokenizer.eos_token_id
    vocab = tokenizer.get_vocab()
    end_ids = {eos_id} | {vocab[s] for s in ("<|endoftext|>", "<|im_end|>") if s in vocab}
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else eos_id
    encoded = [tokenizer(s, add_special_tokens=False)["input_ids"] for s in starts]

    todo = only if only is not None else chunk_order(cfg)
    for split, index in todo:
        name = chunk_name(split, index)
        path = work_dir / "chunks" / f"{name}.npz"
        want_acts = capture_layer is not None and split == "train"
        acts_path = (acts_dir(work_dir, capture_layer) / f"{name}.safetensors"
                     if want_acts and capture_layer is not None else None)
        if path.is_file():
            continue
        if deadline is not None and time.time() > deadline:
            log(f"deadline reached: stopping before chunk {name}")
            break
        t0 = time.time()
        prompts = [encoded[i] for i in cfg.chunk_starts(split, index, len(starts))]
        samples, captured = generate_samples(
            model, prompts, cfg=cfg, seed=cfg.chunk_seed(split, index), eos_id=eos_id, end_ids=end_ids,
            pad_id=pad_id, capture_layer=capture_layer if want_acts else None)
        tokens = np.concatenate([np.asarray(s, dtype=np.uint16) for s in samples])
        lengths = np.asarray([len(s) for s in samples], dtype=np.int32)
        if captured is not None and acts_path is not None:
            save_acts(acts_path, *captured)
        save_npz(path, tokens=tokens, lengths=lengths)
        dt = time.time() - t0
        log(f"chunk {name}: {len(tokens)} tokens in {dt:.0f} s ({len(tokens) / dt:.0f} tokens/s)")
        if progress is not None:
            progress(split, index, len(tokens))
    return [(s, i) for s, i in chunk_order(cfg) if (work_dir / "chunks" / f"{chunk_name(s, i)}.npz").is_file()]


def chunk_tokens(work_dir: Path, split: str, index: int) -> np.ndarray:
    with np.load(Path(work_dir) / "chunks" / f"{chunk_name(split, index)}.npz") as z:
        return z["tokens"]


def assemble_corpus(work_dir: Path, cfg: CorpusConfig, out_path: Path) -> dict:
    """Concatenate the present chunks (train chunks in order, then eval chunks) into `out_path`.

    Uses the longest prefix 0..n-1 of each split that is on disk (a partial build gives a smaller corpus);
    at least eval-0000 must be present (else HarnessError).
    A task whose contexts must all come from text the coder never saw reads it with
    `[corpus] offset = eval_start`. Returns a summary: token counts, eval_start, sha256, number of chunks.
    """
    from harness.errors import HarnessError

    work_dir = Path(work_dir)
    present = lambda s, i: (work_dir / "chunks" / f"{chunk_name(s, i)}.npz").is_file()  # noqa: E731
    def prefix(split: str, n: int) -> int:
        k = 0
        while k < n and present(split, k):
            k += 1
        return k

    n_train = prefix("train", cfg.n_train_chunks)
    n_eval = prefix("eval", cfg.n_eval_chunks)
    if n_eval == 0:
        raise HarnessError(f"corpus chunk eval-0000 is missing in {work_dir}: rerun the corpus step")
    train = [chunk_tokens(work_dir, "train", i) for i in range(n_train)]
    evals = [chunk_tokens(work_dir, "eval", i) for i in range(n_eval)]
    train_tokens = np.concatenate(train) if train else np.zeros(0, dtype=np.uint16)
    tokens = np.concatenate([train_tokens] + evals).astype(np.uint16)
    eval_start = int(len(train_tokens))
    out_path = Path(out_path)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    save_npz(out_path, tokens=tokens, eval_start=np.asarray(eval_start, dtype=np.int64))
    from harness.io import sha256_file

    return {
        "tokens": int(len(tokens)),
        "train_tokens": eval_start,
        "eval_tokens": int(len(tokens) - eval_start),
        "eval_start": eval_start,
        "train_chunks": n_train,
        "train_chunks_planned": cfg.n_train_chunks,
        "eval_chunks": n_eval,
        "eval_chunks_planned": cfg.n_eval_chunks,
        "complete": n_train == cfg.n_train_chunks and n_eval == cfg.n_eval_chunks,
        "sha256": sha256_file(out_path),
    }

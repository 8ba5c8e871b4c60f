"""Shared test settings.

Tiny models run fastest on one thread: with two OpenMP threads and any other process on the second core,
every op waits on a descheduled thread (measured here: 6.6 ms vs 635 ms per tiny forward).
"""

import os

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch  # noqa: E402

torch.set_num_threads(1)


from pathlib import Path  # noqa: E402

import pytest  # noqa: E402


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """A task built by `harness make-tiny-task`: one per test module, each with its own cache below it."""
    from harness.cli import main

    root = tmp_path_factory.mktemp("tiny")
    assert main(["make-tiny-task", "-o", str(root / "task")]) == 0
    return root


@pytest.fixture(autouse=True)
def _tiny_cache(request, monkeypatch):
    """Tests on the tiny task keep their prepared steps and predictions in that task's own cache."""
    if "tiny" not in request.fixturenames:
        return
    root = request.getfixturevalue("tiny")   # a module may define its own `tiny` (not a task folder)
    if isinstance(root, Path) and (root / "task" / "task.toml").is_file():
        monkeypatch.setenv("HARNESS_CACHE", str(root / "cache"))


def evaluate_tiny_submissions(root: Path, texts: dict[str, str], leave_out: int = 0) -> None:
    """In `root` (the cwd, its cache set by the caller): the tiny task in `task/`, and one submission per
    `texts` item (method name -> the explanation given to every rewritten latent, the last `leave_out` left
    unexplained), each evaluated into `results/`."""
    import json

    from harness.cli import main
    from harness.data.prepare import prepare
    from harness.task.spec import load_task

    assert main(["make-tiny-task", "-o", str(root / "task")]) == 0
    latents = prepare(load_task(str(root / "task"))).rewritten
    for name, text in texts.items():
        (root / f"{name}.json").write_text(json.dumps({
            "task": "tiny-llama-transcoder", "method": name, "description": "d",
            "explanations": {str(j): text for j in latents[:len(latents) - leave_out]}}))
        assert main(["eval", "--task", "task", "--submission", f"{name}.json", "--results", "results",
                     "--backend", "prefix"]) == 0

"""Builders of the real tasks' data and model artifacts (corpus, trained coder).

`python -m harness.build` (or `scripts/build_smollm2_task.py`) runs every step in order; each step is
resumable and can be rerun after an interruption. Nothing here is imported by the scoring harness.
"""

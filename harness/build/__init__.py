"""Builders of the real tasks' data and model artifacts (corpus, trained coder).

`scripts/build_smollm2_task.py` (`python -m harness.build.smollm2_task`) runs every step in order; each step is
resumable and can be rerun after an interruption. Nothing here is imported by the scoring harness.
"""

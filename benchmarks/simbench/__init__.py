"""The pieces of `benchmarks/simulate.py`, one module per role: the machine and its quiet (`machine`), the
workload (`workload`), the vLLM worker process (`vllm_run`) and where measurements are recorded (`record`)."""

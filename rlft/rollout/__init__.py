"""Rollout engines: HF `generate` on CPU (tested everywhere), vLLM on GPU."""

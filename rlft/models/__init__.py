"""Policy models: load any HF causal LM, build the tiny offline model, convert SmolLM2 from GGUF."""

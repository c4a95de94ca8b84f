"""rlft: reinforcement-learning fine-tuning of language models for reasoning (SFT warm-up, ReFT PPO, CARFT)."""

__version__ = "0.1.0"

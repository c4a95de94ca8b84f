"""rlft: reinforcement-learning fine-tuning of language models for reasoning (SFT warm-up, ReFT PPO, CARFT)."""

__version__ = "0.1.0"

# Before anything imports torch: the process keeps the host memory it frees (RLFT_KEEP_FREED_MEMORY; why, and why
# here: rlft/utils/memory.py).
from rlft.utils import memory as _memory

_memory.apply(_memory.setting_from_environment())

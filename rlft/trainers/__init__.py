"""Training loops: SFT warm-up (sft.py); the PPO loop follows in ppo.py."""

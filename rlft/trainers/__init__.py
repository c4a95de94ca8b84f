"""Training loops: SFT warm-up (sft.py), the RL loop (ppo.py) over the algorithms of algorithms.py (CARFT's phases in carft.py), offline self-training (selftrain.py)."""

"""The reward role: scores decoded responses (`Reward` protocol in `base.py`).

In-process it is `RewardRole` (`role.py`: the configured `reward.fn` behind a timeout); on Ray a pool of
actors, each holding a `RewardRole` (`rlft/dist/ray_roles.py`). The scoring functions themselves live in
the standalone top-level `rewards` package, which never imports rlft.
"""

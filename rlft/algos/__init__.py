"""Pure algorithm math for rlft: tensor -> tensor functions that import only torch and math.

Call them through their modules (`ppo.gae(...)`, `kl.kl_penalty(...)`, `contrastive.loss(...)`):
- `ppo`: masked statistics, reward shaping, GAE, clipped policy/value losses, aggregation (ReFT);
- `advantages`: critic-free estimators (GRPO, Dr. GRPO, RLOO, REINFORCE++, REINFORCE++-baseline);
- `dapo`: DAPO's dynamic-sampling filter, overlong filtering and soft overlong punishment;
- `kl`: k1/k2/k3 estimators and the fixed/adaptive KL-coefficient controllers;
- `contrastive`: CARFT pooling, InfoNCE loss, LCS negatives, embedding partial reward;
- `sft`: the warm-up cross-entropy and label masking;
- `rerank`: best-of-k selection of one sample per group at inference.

Importing this package must not pull in transformers, ray, deepspeed, vllm or the rest of rlft
(a unit test checks it), so the math stays testable in milliseconds.
"""

from rlft.algos import advantages, contrastive, dapo, kl, ppo, rerank, sft

__all__ = ["advantages", "contrastive", "dapo", "kl", "ppo", "rerank", "sft"]

"""CARFT on top of the ReFT loop (`specs/carft.md`): the anchor forward, the partial reward, the loss term.

The loop in `ppo.py` calls these hooks for rows with `anchor_phase` (`algo=carft`, `rlft/trainers/algorithms.py`):
- `anchor_phase` (step 3, no grad, eval mode, once per rollout batch): pools the embedding of each
  sample's *annotated* CoT (prompt + CoT + answer line + EOS, pooled over the target tokens) with the
  current policy; with `carft.negative=lcs` it also computes the LCS masks and z_1 (anchor tokens
  outside the LCS); with `carft.partial_reward=embedding` it rescales wrong-but-extractable scores.
- `loss_term` (step 5, inside the loss): pools z_gen over the generated tokens with gradient and returns
  cl_coef * L_cl (v4 positive InfoNCE; with the LCS negative, 0.5 * (L_pos + L_neg) as in v9).

Where it runs: the anchor forwards go through the learner (`Learner.pooled_embeddings` with `pool_anchor` /
`pool_response`), so with `cluster.backend=ray` they run on the learner ranks' own (ZeRO-sharded) modules and
only the pooled (B, 64) embeddings come back; the driver tokenises and runs the LCS (CPU). The loss runs
inside each rank's `train_step`. In-process there is one rank, so the InfoNCE negatives are the other samples
of the micro-batch; on R ranks they are every rank's micro-batch (the learner's all-gather, no gradient from
other ranks), and the normaliser Σc_i stays per rank (spec §4): R ranks x m samples equal one process with
micro-batches of R·m when every rank holds as many correct samples (tested), and differ otherwise.
Deviation: the LCS runs on token ids of prompt + annotated target vs prompt + response, without pads
(the reference runs it on token strings of the padded sequences and removes pads afterwards: same LCS).
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from rlft.algos import contrastive
from rlft.config import Config
from rlft.learner.base import Learner
from rlft.models.policy import PolicyOutput
from rlft.tasks.base import Record
from rlft.tasks.chat import PromptFormat
from rlft.tasks.encoding import IGNORE, collate, encode_examples
from rlft.types import TrainBatch


def _anchor_batch(tokenizer, records: list[Record], cfg: Config) -> dict[str, torch.Tensor]:
    examples, _ = encode_examples(tokenizer, records, cfg.data.style, cfg.sft.max_seq_tokens,
                                  fmt=PromptFormat.of(cfg.data))
    batch = collate(examples, tokenizer.pad_token_id)
    batch["cot_mask"] = (batch.pop("labels") != IGNORE).long()  # the annotated target tokens (incl. EOS)
    return batch


def pool_anchor(output: PolicyOutput, mb: dict) -> dict[str, torch.Tensor]:
    """z_anchor (b, D) over the annotated target tokens [and z_anchor_diff over those outside the LCS]."""
    z = {"z_anchor": contrastive.pool(output.values, output.embeddings, mb["cot_mask"])}
    if "diff_mask" in mb:
        z["z_anchor_diff"] = contrastive.pool(output.values, output.embeddings, mb["diff_mask"])
    return z


def pool_response(output: PolicyOutput, mb: dict) -> dict[str, torch.Tensor]:
    """z_gen (b, D) over the generated tokens of prompt + response sequences (the embedding partial reward)."""
    P, T = mb["prompt_mask"].shape[1], mb["response_mask"].shape[1]
    return {"z_gen": contrastive.pool(output.values[:, P:P + T], output.embeddings[:, P:P + T], mb["response_mask"])}


@torch.no_grad()
def anchor_phase(cfg: Config, policy: Learner, tokenizer, owners: list[Record], batch: TrainBatch) -> dict:
    """Sets `z_anchor` (B, D) [and `lcs_gen_in` / `z_anchor_diff`] on `batch`; may rescale its `scores`.
    The forwards run where the policy lives (`policy.pooled_embeddings`: this process, or every learner rank
    on Ray, each pooling its rows, on its model's device); tokenising and the LCS run here, and what it sets on
    `batch` comes back on the CPU, like the rest of the batch."""
    if any(r.cot is None and r.program is None for r in owners):
        raise ValueError("algo=carft needs annotated CoTs in the training data (the anchor); "
                         f"record {next(r.id for r in owners if r.cot is None and r.program is None)} has none")
    anchor = _anchor_batch(tokenizer, owners, cfg)
    micro = cfg.ppo.micro_batch_size_per_device
    if cfg.carft.negative == "lcs":
        gen_ids = torch.cat([batch.prompt_ids, batch.response_ids], dim=1)
        gen_mask = torch.cat([batch.prompt_mask, batch.response_mask], dim=1)
        anchor_in, gen_in = contrastive.lcs_masks(anchor["input_ids"], anchor["attention_mask"], gen_ids, gen_mask)
        batch.lcs_gen_in = gen_in.long()
        anchor["diff_mask"] = (anchor["cot_mask"].bool() & ~anchor_in).long()  # z_1: anchor tokens outside the LCS
    pooled = policy.pooled_embeddings(anchor, pool_anchor, micro)
    batch.z_anchor = pooled["z_anchor"]
    batch.z_anchor_diff = pooled.get("z_anchor_diff")
    metrics = {}
    if cfg.carft.partial_reward == "embedding":
        sequences = batch.sequences()
        sequences["input_ids"] = torch.cat([batch.prompt_ids, batch.response_ids], 1)
        sequences["attention_mask"] = torch.cat([batch.prompt_mask, batch.response_mask], 1)
        z_gen = policy.pooled_embeddings(sequences, pool_response, micro)["z_gen"]
        scores = batch.scores
        is_partial = (scores > 0) & (scores < 1)
        batch.scores = contrastive.partial_reward(scores, is_partial, batch.z_anchor, z_gen)
        metrics["carft/partial_reward_mean"] = batch.scores[is_partial].mean() if is_partial.any() else torch.tensor(0.0)
    return metrics


def loss_term(cfg: Config, output: PolicyOutput, mb: dict,
              gather_ranks: Callable[[torch.Tensor], torch.Tensor] | None = None) -> tuple[torch.Tensor, dict]:
    """cl_coef * L_cl for one micro-batch (z_gen pooled over the generated tokens, with gradient). `output` is
    the whole sequence's (`ResponseOutput.sequence`): the tokens themselves, not the positions scoring them.
    `gather_ranks`: the learner's all-gather (`ResponseOutput.gather_ranks`); with it the InfoNCE negatives
    (and the LCS loss's z_3 keys) are every rank's micro-batch, without gradient from the other ranks."""
    P, T = mb["prompt_ids"].shape[1], mb["response_ids"].shape[1]
    values, emb = output.values[:, P:P + T], output.embeddings[:, P:P + T]  # the generated tokens themselves
    z_gen = contrastive.pool(values, emb, mb["response_mask"])
    correct = mb["scores"] > 0.5
    z_others = None if gather_ranks is None else gather_ranks(z_gen)
    l_cl, metrics = contrastive.loss(mb["z_anchor"], z_gen, correct, z_others, tau=cfg.carft.tau,
                                     clamp=cfg.carft.clamp, negatives_grad=cfg.carft.negatives_grad)
    metrics["carft/pool_entropy"] = contrastive.pool_entropy(contrastive.pool_weights(values, mb["response_mask"])).mean()
    if cfg.carft.negative == "lcs":
        gen_in = mb["lcs_gen_in"].bool()
        response_positions = torch.zeros_like(gen_in)
        response_positions[:, P:] = mb["response_mask"].bool()
        z2 = contrastive.pool(output.values, output.embeddings, gen_in)
        z3 = contrastive.pool(output.values, output.embeddings, response_positions & ~gen_in)
        z3_all = z3 if gather_ranks is None else torch.cat([z3, gather_ranks(z3)])  # local rows first
        valid = ~correct & gen_in.any(-1)
        l_neg, neg_metrics = contrastive.negative_loss(mb["z_anchor_diff"], z2, z3_all, valid, tau=cfg.carft.tau,
                                                       clamp=cfg.carft.clamp)
        metrics.update(neg_metrics)
        l_cl = 0.5 * (l_cl + l_neg)
    return cfg.carft.cl_coef * l_cl, metrics

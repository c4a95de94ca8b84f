"""CARFT on top of the ReFT loop (`specs/carft.md`): the anchor forward, the partial reward, the loss term.

The loop in `ppo.py` calls these hooks for rows with `anchor_phase` (`algo=carft`, `rlft/trainers/algorithms.py`):
- `anchor_phase` (step 3, no grad, eval mode, once per rollout batch): pools the embedding of each
  sample's *annotated* CoT (prompt + CoT + answer line + EOS, pooled over the target tokens) with the
  current policy; with `carft.negative=lcs` it also computes the LCS masks and z_1 (anchor tokens
  outside the LCS); with `carft.partial_reward=embedding` it rescales wrong-but-extractable scores.
- `loss_term` (step 5, inside the loss): pools z_gen over the generated tokens with gradient and returns
  cl_coef * L_cl (v4 positive InfoNCE; with the LCS negative, 0.5 * (L_pos + L_neg) as in v9).

In-process there is one rank, so the InfoNCE negatives are the other samples of the micro-batch.
Deviation: the LCS runs on token ids of prompt + annotated target vs prompt + response, without pads
(the reference runs it on token strings of the padded sequences and removes pads afterwards: same LCS).
"""

from __future__ import annotations

import torch

from rlft.adapters.positions import PositionMeta
from rlft.algos import contrastive
from rlft.config import Config
from rlft.models.policy import PolicyOutput
from rlft.tasks.base import Record
from rlft.types import TrainBatch
from rlft.tasks.chat import PromptFormat
from rlft.tasks.encoding import IGNORE, collate, encode_examples
from rlft.utils.device import module_device, to_device


def _anchor_batch(tokenizer, records: list[Record], cfg: Config) -> dict[str, torch.Tensor]:
    examples, _ = encode_examples(tokenizer, records, cfg.data.style, cfg.sft.max_seq_tokens,
                                  fmt=PromptFormat.of(cfg.data))
    batch = collate(examples, tokenizer.pad_token_id)
    batch["cot_mask"] = (batch["labels"] != IGNORE).long()  # the annotated target tokens (incl. EOS)
    return batch


@torch.no_grad()
def anchor_phase(cfg: Config, model, tokenizer, owners: list[Record], batch: TrainBatch) -> dict:
    """Sets `z_anchor` (B, D) [and `lcs_gen_in` / `z_anchor_diff`] on `batch`; may rescale its `scores`. Runs on
    the policy module's device; what it sets on `batch` is on the CPU, like the rest of the batch."""
    model.eval()
    if any(r.cot is None and r.program is None for r in owners):
        raise ValueError("algo=carft needs annotated CoTs in the training data (the anchor); "
                         f"record {next(r.id for r in owners if r.cot is None and r.program is None)} has none")
    device = module_device(model)
    anchor = _anchor_batch(tokenizer, owners, cfg)
    micro = cfg.ppo.micro_batch_size_per_device
    z, z_diff = [], []
    if cfg.carft.negative == "lcs":
        gen_ids = torch.cat([batch.prompt_ids, batch.response_ids], dim=1)
        gen_mask = torch.cat([batch.prompt_mask, batch.response_mask], dim=1)
        anchor_in, gen_in = contrastive.lcs_masks(anchor["input_ids"], anchor["attention_mask"], gen_ids, gen_mask)
        batch.lcs_gen_in = gen_in.long()
        anchor_in = anchor_in.to(device)
    anchor = to_device(anchor, device)
    for s in range(0, len(owners), micro):
        out = model(anchor["input_ids"][s:s + micro], anchor["attention_mask"][s:s + micro],
                    PositionMeta.unpadded_prompt(anchor["prompt_len"][s:s + micro]))
        cot = anchor["cot_mask"][s:s + micro]
        z.append(contrastive.pool(out.values, out.embeddings, cot))
        if cfg.carft.negative == "lcs":
            z_diff.append(contrastive.pool(out.values, out.embeddings, cot.bool() & ~anchor_in[s:s + micro]))
    batch.z_anchor = torch.cat(z).cpu()  # to host, with the rest of the batch
    if z_diff:
        batch.z_anchor_diff = torch.cat(z_diff).cpu()
    metrics = {}
    if cfg.carft.partial_reward == "embedding":
        z_gen = []
        for s in range(0, len(owners), micro):
            mb = to_device({k: v[s:s + micro] for k, v in batch.sequences().items()}, device)
            ids, mask = torch.cat([mb["prompt_ids"], mb["response_ids"]], 1), torch.cat([mb["prompt_mask"], mb["response_mask"]], 1)
            out = model(ids, mask, PositionMeta.from_prompt_mask(mb["prompt_mask"]))
            P, T = mb["prompt_ids"].shape[1], mb["response_ids"].shape[1]
            z_gen.append(contrastive.pool(out.values[:, P:P + T], out.embeddings[:, P:P + T], mb["response_mask"]))
        scores = batch.scores
        is_partial = (scores > 0) & (scores < 1)
        batch.scores = contrastive.partial_reward(scores, is_partial, batch.z_anchor, torch.cat(z_gen).cpu())
        metrics["carft/partial_reward_mean"] = batch.scores[is_partial].mean() if is_partial.any() else torch.tensor(0.0)
    return metrics


def loss_term(cfg: Config, output: PolicyOutput, mb: dict) -> tuple[torch.Tensor, dict]:
    """cl_coef * L_cl for one micro-batch (z_gen pooled over the generated tokens, with gradient). `output` is
    the whole sequence's (`ResponseOutput.sequence`): the tokens themselves, not the positions scoring them."""
    P, T = mb["prompt_ids"].shape[1], mb["response_ids"].shape[1]
    values, emb = output.values[:, P:P + T], output.embeddings[:, P:P + T]  # the generated tokens themselves
    z_gen = contrastive.pool(values, emb, mb["response_mask"])
    correct = mb["scores"] > 0.5
    l_cl, metrics = contrastive.loss(mb["z_anchor"], z_gen, correct, tau=cfg.carft.tau, clamp=cfg.carft.clamp,
                                     negatives_grad=cfg.carft.negatives_grad)
    metrics["carft/pool_entropy"] = contrastive.pool_entropy(contrastive.pool_weights(values, mb["response_mask"])).mean()
    if cfg.carft.negative == "lcs":
        gen_in = mb["lcs_gen_in"].bool()
        response_positions = torch.zeros_like(gen_in)
        response_positions[:, P:] = mb["response_mask"].bool()
        z2 = contrastive.pool(output.values, output.embeddings, gen_in)
        z3 = contrastive.pool(output.values, output.embeddings, response_positions & ~gen_in)
        valid = ~correct & gen_in.any(-1)
        l_neg, neg_metrics = contrastive.negative_loss(mb["z_anchor_diff"], z2, z3, valid, tau=cfg.carft.tau,
                                                       clamp=cfg.carft.clamp)
        metrics.update(neg_metrics)
        l_cl = 0.5 * (l_cl + l_neg)
    return cfg.carft.cl_coef * l_cl, metrics

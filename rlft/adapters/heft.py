"""HEFT: a LoRA stage, then a LoReFT stage on top, as a schedule over one run.

Hill, "HEFT: A Coarse-to-Fine Hierarchy for Enhancing the Efficiency and Accuracy of Language Model
Reasoning" (arXiv 2509.09801) trains LoRA first (broad weight-space adaptation), then ReFT (targeted
representation edits). Only the abstract is available; how the epochs split, and whether the LoRA is
merged or frozen in stage 2, are unknown. rlft's reading (`specs/adapters.md` §6):

- both members are attached from the start; the LoReFT is the identity until it trains;
- stage 1 (the first round(`adapter.heft.lora_fraction` x total) SFT epochs or RL iterations) trains the
  LoRA only; stage 2 freezes it (kept unmerged, so `disabled()` still gives the bare base) and trains
  the LoReFT;
- the optimizer holds both members throughout (a frozen member gets no gradient, so AdamW skips it), so
  resuming in either stage restores the same optimizer layout.
"""

from __future__ import annotations

import contextlib
from pathlib import Path
from typing import Iterator

from torch import nn

from rlft.adapters.base import AdapterBase, base_config_fingerprint
from rlft.adapters.lora import PeftLoRA
from rlft.adapters.positions import PositionMeta
from rlft.adapters.repft import RepFTAdapter

STAGE_DIRS = ("stage1_lora", "stage2_loreft")


class HEFT(AdapterBase):
    kind = "heft"

    def __init__(self, lora: PeftLoRA, loreft: RepFTAdapter, *, lora_fraction: float, config: dict,
                 base_path: str | Path = ""):
        super().__init__(base_path)
        self.lora, self.loreft, self.lora_fraction, self.config = lora, loreft, lora_fraction, config
        self.stage = 1

    def attach(self, model: nn.Module) -> nn.Module:
        if self.model is None:
            self.model = self.lora.attach(model)
            self.loreft.attach(self.model)  # hooks on the decoder under peft's wrapper
            self._set_stage(1)
        return self.model

    def _set_stage(self, stage: int) -> None:
        self.stage = stage
        for _, p in self.lora.trainable_parameters():
            p.requires_grad_(stage == 1)
        for _, p in self.loreft.trainable_parameters():
            p.requires_grad_(stage == 2)

    def set_progress(self, done: int, total: int) -> None:
        self._set_stage(1 if done < round(self.lora_fraction * total) else 2)

    def trainable_parameters(self) -> list[tuple[str, nn.Parameter]]:
        return ([(f"lora.{n}", p) for n, p in self.lora.trainable_parameters()]
                + [(f"loreft.{n}", p) for n, p in self.loreft.trainable_parameters()])

    def param_groups(self, weight_decay: float) -> list[dict]:
        lora = [p for _, p in self.lora.trainable_parameters()]
        return [{"params": lora, "weight_decay": weight_decay}, *self.loreft.param_groups(weight_decay)]

    def plan(self, meta: PositionMeta | None):
        return self.loreft.plan(meta)

    @contextlib.contextmanager
    def disabled(self) -> Iterator[None]:
        with self.lora.disabled(), self.loreft.disabled():
            yield

    def after_optimizer_step(self) -> None:
        self.loreft.after_optimizer_step()

    def metrics(self) -> dict[str, float]:
        return {**self.loreft.metrics(), "adapter/stage": float(self.stage)}

    def own_modules(self) -> nn.Module:
        return self.loreft.interventions

    def spec(self) -> dict:
        return {"config": self.config, "members": list(STAGE_DIRS), "num_parameters": self.num_parameters()}

    def save(self, path: str | Path) -> None:
        path = Path(path)
        self.write_json(path, base_config_fingerprint(self.model))
        self.lora.save(path / STAGE_DIRS[0])
        self.loreft.save(path / STAGE_DIRS[1])

    def load(self, path: str | Path) -> None:
        path = Path(path)
        self.read_checkpoint_info(path)
        self.lora.load(path / STAGE_DIRS[0])
        self.loreft.load(path / STAGE_DIRS[1])

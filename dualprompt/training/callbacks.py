"""Lightning callbacks: export the best model (a prompt file, or a fine-tuned open_clip folder),
or the Gaussian-weighted average of the epochs (PromptSRC)."""
from __future__ import annotations

import logging
import math
from pathlib import Path
from typing import Any, Callable, Optional

import lightning as L
import torch

log = logging.getLogger(__name__)


class ExportBestPrompts(L.Callback):
    """Write the model's prompts to `path` whenever `monitor` improves (max), on rank 0.

    With no validation at all, the prompts of the end of training are written. The best score
    is part of the checkpoint, so a resumed run keeps comparing against it.
    save: `save(model, path)` writes something else than a prompt file (full fine-tuning).
    """

    def __init__(self, path: Path, monitor: str,
                 save: Optional[Callable[[Any, Path], Any]] = None) -> None:
        self.path, self.monitor = Path(path), monitor
        self.save = save or (lambda model, path: model.save_prompts(path))
        self.best: Optional[float] = None
        self.best_epoch: Optional[int] = None

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.sanity_checking or self.monitor not in trainer.callback_metrics:
            return
        score = float(trainer.callback_metrics[self.monitor])
        if self.best is None or score > self.best:
            self.best, self.best_epoch = score, trainer.current_epoch
            if trainer.is_global_zero:
                self.save(pl_module.model, self.path)
                log.info("epoch %d: %s improved to %.2f, best model written to %s",
                         trainer.current_epoch, self.monitor, score, self.path)

    def on_fit_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self.best is None and trainer.is_global_zero:
            self.save(pl_module.model, self.path)
            log.info("no validation metric %s: final model written to %s", self.monitor,
                     self.path)

    def state_dict(self) -> dict[str, Any]:
        return {"best": self.best, "best_epoch": self.best_epoch}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.best, self.best_epoch = state_dict["best"], state_dict["best_epoch"]


class GaussianPromptAggregation(L.Callback):
    """PromptSRC's Gaussian prompt aggregation: the exported model is the average of the
    learned tensors at the end of every epoch, weighted by a Gaussian over the epochs.

    mean, std: as fractions of `max_epochs` (PromptSRC: epoch 15 of 20 -> 0.75, std 1 -> 0.05);
    epochs count from 1, as there. The aggregate replaces the best-epoch export; the running
    sum is part of the checkpoint, so a resumed run aggregates the same epochs.
    """

    def __init__(self, path: Path, mean: float, std: float, max_epochs: int,
                 save: Callable[[Any, Path], Any]) -> None:
        if std <= 0 or max_epochs < 1:
            raise ValueError(f"GPA needs std > 0 and max_epochs >= 1, got {std}, {max_epochs}")
        self.path, self.save = Path(path), save
        density = [math.exp(-0.5 * ((e / max_epochs - mean) / std) ** 2)
                   for e in range(1, max_epochs + 1)]
        self.weights = [d / sum(density) for d in density]
        self.sum: dict[str, torch.Tensor] = {}

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        weight = self.weights[min(trainer.current_epoch, len(self.weights) - 1)]
        for name, value in pl_module.model.prompt_state_dict().items():
            add = weight * value.detach().float().cpu()
            self.sum[name] = self.sum[name] + add if name in self.sum else add

    def on_fit_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        model = pl_module.model
        done = sum(self.weights[:trainer.current_epoch]) or 1.0  # early stop: renormalise
        state = {k: (v / done).to(model.prompt_state_dict()[k]) for k, v in self.sum.items()}
        model.load_state_dict(state, strict=False)
        if trainer.is_global_zero:
            self.save(model, self.path)
            log.info("Gaussian prompt aggregation over %d epochs written to %s",
                     trainer.current_epoch, self.path)

    def state_dict(self) -> dict[str, Any]:
        return {"sum": self.sum}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.sum = dict(state_dict["sum"])

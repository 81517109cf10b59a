"""Lightning callbacks: export the best model (a prompt file, or a fine-tuned open_clip folder)."""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, Callable, Optional

import lightning as L

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

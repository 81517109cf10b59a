"""A non-finite loss stops the run, naming the step and the last good checkpoint."""
from __future__ import annotations

import lightning as L
import pytest
import torch
from torch.utils.data import DataLoader

from dualprompt import DualPromptCLIP, PromptConfig
from dualprompt.training.factory import build_trainer
from dualprompt.training.module import PromptRetrievalModule
from dualprompt.training.schema import LossConfig, OptimConfig, TrainerConfig


def _batches(tokenizer, n=4):
    torch.manual_seed(0)
    tokens = tokenizer([f"a photo of thing {i}" for i in range(4)])
    return [{"image": torch.randn(4, 3, 32, 32), "tokens": tokens,
             "negative_tokens": tokens[:, None].expand(4, 1, -1).clone(),
             "negative_mask": torch.zeros(4, 1, dtype=torch.bool),
             "negative_categories": torch.full((4, 1), -1), "category": torch.zeros(4, dtype=torch.long)}
            for _ in range(n)]


def test_non_finite_loss_stops_with_step_and_checkpoint(tiny_clip, tokenizer, tmp_path):
    model = DualPromptCLIP(tiny_clip, PromptConfig(attribute_init=None))
    module = PromptRetrievalModule(model, loss=LossConfig(reweighting=False),
                                   optim=OptimConfig(name="sgd", lr=1.0))
    batches = _batches(tokenizer)

    class Poison(L.Callback):  # corrupt the prompts after the first epoch's checkpoint
        def on_train_epoch_start(self, trainer, pl_module):
            if trainer.current_epoch == 1:
                with torch.no_grad():
                    pl_module.model.attribute.vectors.fill_(float("nan"))

    trainer = build_trainer(TrainerConfig(max_epochs=3, accelerator="cpu", devices=1,
                                          enable_progress_bar=False), tmp_path, monitor=None,
                            logger=False, callbacks=[Poison()])
    with pytest.raises(FloatingPointError) as err:
        trainer.fit(module, train_dataloaders=DataLoader(batches, batch_size=None))
    message = str(err.value)
    assert "epoch 1, step 4" in message
    assert str(tmp_path / "checkpoints" / "last.ckpt") in message
    saved = torch.load(tmp_path / "checkpoints" / "last.ckpt", weights_only=True)
    assert saved["global_step"] == 4  # the last good state, not a NaN one
    assert torch.isfinite(saved["state_dict"]["model.attribute.vectors"]).all()

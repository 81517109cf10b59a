"""Numerical safety: a non-finite loss stops the run, naming the step and the last good
checkpoint; under bf16-mixed the losses stay in fp32."""
from __future__ import annotations

import lightning as L
import pytest
import torch
from torch.utils.data import DataLoader

from dualprompt import DualPromptCLIP, PromptConfig
from dualprompt.data.datasets import TrainBatch
from dualprompt.training.factory import build_trainer
from dualprompt.training.module import PromptRetrievalModule
from dualprompt.training.schema import LossConfig, OptimConfig, TrainerConfig
from tests.test_train_cli import toy  # noqa: F401  (module fixture)


def _batches(tokenizer, n=4):
    torch.manual_seed(0)
    tokens = tokenizer([f"a photo of thing {i}" for i in range(4)])
    return [TrainBatch(image=torch.randn(4, 3, 32, 32), tokens=tokens,
                       negative_tokens=tokens[:, None].expand(4, 1, -1).clone(),
                       negative_mask=torch.zeros(4, 1, dtype=torch.bool),
                       negative_categories=torch.full((4, 1), -1),
                       category=torch.zeros(4, dtype=torch.long))
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


def _features(seed=0, b=16, k=4, d=64):
    import torch.nn.functional as F
    torch.manual_seed(seed)
    image = F.normalize(torch.randn(b, d), dim=-1)
    text = F.normalize(image + torch.randn(b, d), dim=-1)
    negatives = F.normalize(image[:, None] + torch.randn(b, k, d), dim=-1)
    return image, text, negatives


def test_losses_of_bf16_features_are_fp32_even_under_autocast():
    """bf16-mixed: the logits and losses are computed in fp32 (autocast would run their
    matmuls in bf16 despite the losses' `.float()` casts)."""
    from dualprompt.losses import category_loss, contrastive_loss

    image, text, negatives = _features()
    scale = torch.tensor(100.0)  # CLIP's logit scale: bf16 logits would be off by ~0.3
    fp32 = (contrastive_loss(image, text, scale), category_loss(image, text, negatives, scale))
    bf16 = [t.bfloat16() for t in (image, text, negatives)]
    with torch.autocast("cpu", dtype=torch.bfloat16):
        mixed = (contrastive_loss(*bf16[:2], scale), category_loss(*bf16, scale))
        same_inputs = (contrastive_loss(image, text, scale),
                       category_loss(image, text, negatives, scale))
    for loss, want, exact in zip(mixed, fp32, same_inputs):
        assert loss.dtype == exact.dtype == torch.float32
        torch.testing.assert_close(loss, want, rtol=2e-3, atol=0)  # bf16 rounding of features
        torch.testing.assert_close(exact, want, rtol=1e-6, atol=0)  # fp32 maths under autocast


@pytest.mark.slow  # a real bf16 training run
def test_bf16_mixed_training_run_on_cpu(toy, tiny_config_file):  # noqa: F811
    import json

    from tests.test_train_cli import run_cli

    run_dir = toy["tmp"] / "bf16"
    run_cli("dualprompt.train", toy, run_dir, "trainer.precision=bf16-mixed",
            "trainer.max_epochs=1", "eval_zero_shot=false")
    results = json.loads((run_dir / "results.json").read_text())
    assert results["config"]["trainer"]["precision"] == "bf16-mixed"
    assert 0 <= results["test"]["AVG"]["rsum"] <= 600
    metrics = (run_dir / "csv" / "metrics.csv").read_text()
    assert "nan" not in metrics.lower()

"""Building the pieces of a run from its (typed) config: logger, trainer, checkpoint path."""
from __future__ import annotations

import logging
import pickle
from pathlib import Path
from typing import Any, Optional, Union

import lightning as L
import torch
from lightning.pytorch.callbacks import Callback, EarlyStopping, ModelCheckpoint, TQDMProgressBar
from lightning.pytorch.loggers import CSVLogger, Logger, WandbLogger
from lightning.pytorch.plugins import TorchCheckpointIO

from .results import atomic_write
from .schema import LoggerConfig, TrainerConfig

log = logging.getLogger(__name__)


def build_logger(cfg: LoggerConfig, run_dir: Path, config: dict[str, Any]) -> Union[Logger, bool]:
    if cfg.kind == "none":
        return False
    if cfg.kind == "csv":
        return CSVLogger(save_dir=str(run_dir), name="csv", version="")
    if cfg.kind == "wandb":
        logger = WandbLogger(project=cfg.project, entity=cfg.entity, save_dir=str(run_dir),
                             offline=cfg.offline, tags=list(cfg.tags) or None)
        logger.log_hyperparams(config)
        return logger
    raise ValueError(f"logger.kind must be csv, wandb or none, got {cfg.kind!r}")


class SafeCheckpointIO(TorchCheckpointIO):
    """Checkpoint files that a kill cannot corrupt and that cannot run code when loaded.

    Local checkpoints are written next to their final name, then renamed into place:
    Lightning's own save goes through an fsspec transaction whose temp file is in $TMPDIR, and
    when that is another filesystem than the run folder (a local /tmp, runs on shared storage)
    committing it is a copy into the final name, which a kill can leave half written. Remote
    paths (s3://, ...) keep Lightning's way. A checkpoint holding pickled objects that
    `weights_only` loading refuses is refused with its path named (dualprompt's never do)."""

    def save_checkpoint(self, checkpoint: dict[str, Any], path: Any,
                        storage_options: Optional[Any] = None) -> None:
        if "://" in str(path):
            return super().save_checkpoint(checkpoint, path, storage_options)
        atomic_write(Path(path), lambda f: torch.save(checkpoint, f))

    def load_checkpoint(self, path: Any, *args: Any, **kwargs: Any) -> dict[str, Any]:
        try:
            return super().load_checkpoint(path, *args, **kwargs)
        except pickle.UnpicklingError as e:
            reason = next((line.strip().split(". Please")[0] for line in str(e).splitlines()
                           if "Unsupported global" in line), str(e).splitlines()[0])
            raise pickle.UnpicklingError(
                f"{path}: refused, it holds pickled objects that could run code when loaded "
                f"({reason}). dualprompt checkpoints hold tensors and plain values only: use "
                "one written by dualprompt.train, from a source you trust.") from e


def build_trainer(cfg: TrainerConfig, run_dir: Path, *, monitor: Optional[str],
                  logger: Union[Logger, bool], callbacks: list[Callback]) -> L.Trainer:
    """A Lightning Trainer; checkpoints (learned tensors only) go to run_dir/checkpoints."""
    callbacks = list(callbacks)
    ckpt_dir = run_dir / "checkpoints"
    # Lightning 2.6 writes `save_last` only when a top-k checkpoint was written in the same
    # step, so "last" is its own callback: the latest epoch, always, under one name.
    # save_on_exception: SIGTERM (preemption), a non-finite loss or Ctrl-C leave a last.ckpt
    # of the state before the failing step.
    callbacks.append(ModelCheckpoint(dirpath=ckpt_dir, filename="last", monitor=None,
                                     save_top_k=1, enable_version_counter=False,
                                     save_on_exception=True))
    if monitor:
        callbacks.append(ModelCheckpoint(dirpath=ckpt_dir, filename="best", monitor=monitor,
                                         mode="max", save_top_k=1, enable_version_counter=False))
    if cfg.enable_progress_bar:  # tqdm, even where `rich` is installed (Lightning would switch)
        callbacks.append(TQDMProgressBar())
    if cfg.early_stopping_patience is not None and monitor:
        callbacks.append(EarlyStopping(monitor=monitor, mode="max",
                                       patience=cfg.early_stopping_patience))
    return L.Trainer(
        max_epochs=cfg.max_epochs, accelerator=cfg.accelerator, devices=cfg.devices,
        num_nodes=cfg.num_nodes, strategy=cfg.strategy, precision=cfg.precision,
        gradient_clip_val=cfg.gradient_clip_val, log_every_n_steps=cfg.log_every_n_steps,
        deterministic=cfg.deterministic, check_val_every_n_epoch=cfg.check_val_every_n_epoch,
        limit_train_batches=cfg.limit_train_batches, limit_val_batches=cfg.limit_val_batches,
        fast_dev_run=cfg.fast_dev_run, enable_progress_bar=cfg.enable_progress_bar,
        default_root_dir=str(run_dir), logger=logger, callbacks=callbacks,
        plugins=[SafeCheckpointIO()], num_sanity_val_steps=0)


def eval_trainer(cfg: TrainerConfig, run_dir: Path,
                 callbacks: Optional[list[Callback]] = None) -> L.Trainer:
    """A Trainer for evaluation only: no logger, no checkpoints."""
    return L.Trainer(accelerator=cfg.accelerator, devices=cfg.devices, num_nodes=cfg.num_nodes,
                     strategy=cfg.strategy, precision=cfg.precision, logger=False,
                     enable_checkpointing=False, enable_progress_bar=cfg.enable_progress_bar,
                     default_root_dir=str(run_dir), callbacks=callbacks)


def resolve_ckpt_path(ckpt_path: Optional[str], run_dir: Path) -> Optional[str]:
    """`last` means run_dir/checkpoints/last.ckpt (resume in the same run folder)."""
    if ckpt_path is None:
        return None
    if ckpt_path == "last":
        last = run_dir / "checkpoints" / "last.ckpt"
        if not last.is_file():
            raise FileNotFoundError(
                f"ckpt_path=last but there is no {last}. To resume a run, point Hydra at its "
                "folder: hydra.run.dir=<that run folder> ckpt_path=last")
        return str(last)
    if not Path(ckpt_path).is_file():
        raise FileNotFoundError(f"ckpt_path: no checkpoint file {ckpt_path}")
    return ckpt_path

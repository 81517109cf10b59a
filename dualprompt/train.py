"""`python -m dualprompt.train [overrides]`: train prompts, test them, write results.json.

Configs are shipped inside the package (dualprompt/conf); see `--help` for the groups.

Interruptions: checkpoints/last.ckpt is written at the end of every epoch and, on SIGTERM
(preemption), Ctrl-C or an exception, before the process exits; SIGTERM stops at the next batch
with exit status 143. `hydra.run.dir=<the run folder> ckpt_path=last` resumes, mid-epoch
included, and ends like an uninterrupted run with the same seed (tests/test_interruption.py).
"""
from __future__ import annotations

import dataclasses
import logging
import time
import warnings
from pathlib import Path
from typing import Callable

import hydra
import lightning as L
from hydra.core.hydra_config import HydraConfig
from lightning.pytorch.utilities.exceptions import SIGTERMException
from omegaconf import DictConfig, OmegaConf
from safetensors.torch import load_file

from .loading import (LOCAL_DIR, WEIGHTS_FILE, LoadedClip, load_clip, open_clip_config,
                      save_clip_folder)
from .model import DualPromptCLIP
from .training.callbacks import ExportBestPrompts
from .training.datamodule import RetrievalDataModule
from .training.factory import build_logger, build_trainer, eval_trainer, resolve_ckpt_path
from .training.module import PromptRetrievalModule
from .training.prepare import prepare_offline_assets
from .training.results import git_revision, results_table, versions, write_json
from .training.schema import TrainConfig, register_configs

log = logging.getLogger("dualprompt.train")


def train(cfg: TrainConfig, run_dir: Path) -> dict:
    """One run: training with validation (prompts, adapters or, for full fine-tuning, every
    weight), then the best model and the zero-shot CLIP evaluated on the validation and test
    splits; rank 0 writes results.json."""
    start = time.time()
    warnings.filterwarnings("ignore", message=".*module\\(s\\) in eval mode.*")  # the frozen CLIP
    # the data module resumes a mid-epoch checkpoint where it stopped (see its state_dict)
    warnings.filterwarnings("ignore", message=".*checkpoint that ended before the epoch ended.*")
    method = cfg.method
    if method.trains not in ("prompts", "all", "none"):
        raise ValueError(f"method.trains must be prompts, all or none, got {method.trains!r}")
    prepare_offline_assets(cfg.dataset, cfg.model)
    # seeded after the assets: building them (pretraining reseeds and draws from torch's
    # generator) must not make a first run differ from a run on the cache
    L.seed_everything(cfg.seed, workers=True)
    clip = _load(cfg)
    data = RetrievalDataModule(
        cfg.dataset, tokenizer=clip.tokenizer, train_transform=clip.preprocess_val,
        eval_transform=clip.preprocess_val, batch_size=cfg.data.batch_size,
        eval_batch_size=cfg.data.eval_batch_size, num_workers=cfg.data.num_workers,
        category_level=cfg.loss.category_level, seed=cfg.seed)
    data.setup()
    config = OmegaConf.to_container(OmegaConf.structured(cfg), resolve=True)
    results = {"run_dir": str(run_dir), "method": method.name}
    tester = eval_trainer(cfg.trainer, run_dir)
    zero_shot = PromptRetrievalModule(clip.model, val_domains=data.val_domains(),
                                      test_domains=data.test_domains())
    if method.trains == "none":
        results.update(trainable_parameters=0, epochs_trained=0, train_seconds=0.0,
                       data=data.summary())
        module = zero_shot
    else:
        model = _build_model(cfg, clip, data)
        module = PromptRetrievalModule(model, loss=cfg.loss, optim=cfg.optim,
                                       val_domains=data.val_domains(),
                                       test_domains=data.test_domains())
        artifact, save = _artifact(cfg, run_dir)
        logger = build_logger(cfg.logger, run_dir, config)
        trainer = build_trainer(cfg.trainer, run_dir, monitor=cfg.monitor, logger=logger,
                                callbacks=[ExportBestPrompts(artifact, cfg.monitor, save=save)])
        fit_start = time.time()
        # weights_only: a checkpoint from elsewhere cannot run code when it is loaded
        trainer.fit(module, datamodule=data,
                    ckpt_path=resolve_ckpt_path(cfg.ckpt_path, run_dir), weights_only=True)
        results.update(artifact=str(artifact), artifact_bytes=_size(artifact),
                       trainable_parameters=model.num_trainable_parameters(),
                       epochs_trained=trainer.current_epoch,
                       train_seconds=round(time.time() - fit_start, 1), data=data.summary())
        if method.trains == "all":  # the best weights; zero-shot needs the untouched CLIP
            model.clip.load_state_dict(load_file(str(artifact / WEIGHTS_FILE)))
            zero_shot.model = _load(cfg).model
        else:
            results["prompt_file"] = str(artifact)
            model.load_state_dict(load_file(str(artifact)), strict=False)  # the best prompts
    results.update(_evaluate(cfg, tester, data, module, zero_shot))
    results.update(elapsed_s=round(time.time() - start, 1), config=config, versions=versions(),
                   git_revision=git_revision())
    if tester.is_global_zero:
        write_json(run_dir / "results.json", results)
        if "test" in results:
            columns = {"zero-shot": results.get("zero_shot", {}), method.name: results["test"]}
            log.info("test Recall@K (%%), best %s by %s:\n%s", method.name, cfg.monitor,
                     results_table({k: v for k, v in columns.items() if v}))
        log.info("results: %s", run_dir / "results.json")
        if method.trains != "none":
            _log_artifact(logger, artifact, cfg)
    return results


def _evaluate(cfg: TrainConfig, tester: L.Trainer, data: RetrievalDataModule,
              module: PromptRetrievalModule, zero_shot: PromptRetrievalModule) -> dict:
    """The best model, and the zero-shot CLIP when asked, on the val and test splits."""
    out = {}
    stages = [("val", "zero_shot_val", data.val_domains(), tester.validate),
              ("test", "zero_shot", cfg.test and data.test_domains(), tester.test)]
    for key, zero_key, domains, run in stages:
        if not domains:
            continue
        run(module, datamodule=data, verbose=False)
        out[key] = getattr(module, f"{key}_results")
        if cfg.eval_zero_shot:
            if module is not zero_shot:
                run(zero_shot, datamodule=data, verbose=False)
            out[zero_key] = getattr(zero_shot, f"{key}_results")
    return out


def _load(cfg: TrainConfig) -> LoadedClip:
    return load_clip(cfg.model.name, cfg.model.pretrained, config_file=cfg.model.config_file,
                     precision=cfg.model.precision, cache_dir=cfg.model.cache_dir)


def _build_model(cfg: TrainConfig, clip: LoadedClip, data: RetrievalDataModule) -> DualPromptCLIP:
    """The trained model: prompts/adapters on the frozen CLIP, or (trains=all) the CLIP with
    every weight trainable, wrapped the same way so one training step serves every method."""
    prompt = cfg.prompt
    if cfg.method.class_specific:
        names = data.train_class_names()
        if not names:
            raise ValueError(f"method.class_specific needs class names in the training captions "
                             f"(FDRD class_name); dataset {cfg.dataset.name!r} has none")
        prompt = dataclasses.replace(prompt, class_names=names)
    model = DualPromptCLIP(clip.model, prompt, tokenizer=clip.tokenizer,
                           trim_context=cfg.model.trim_context,
                           length_buckets=cfg.model.length_buckets)
    if cfg.method.trains == "all":
        model.clip.requires_grad_(True)
    return model


def _artifact(cfg: TrainConfig, run_dir: Path) -> tuple[Path, Callable]:
    """Where the best model goes and how: a prompt file, or (trains=all) an open_clip folder."""
    if cfg.method.trains != "all":
        return run_dir / "prompts.safetensors", lambda model, path: model.save_prompts(path)
    model_cfg = open_clip_config(_load_name(cfg), cache_dir=cfg.model.cache_dir)
    return (run_dir / "finetuned",
            lambda model, path: save_clip_folder(model.clip, path, model_cfg))


def _load_name(cfg: TrainConfig) -> str:
    """The open_clip name the base CLIP was created from (as `load_clip` resolves it)."""
    if cfg.model.pretrained and cfg.model.pretrained.startswith(LOCAL_DIR):
        return cfg.model.pretrained
    return cfg.model.name


def _size(path: Path) -> int:
    if path.is_dir():
        return sum(f.stat().st_size for f in path.iterdir() if f.is_file())
    return path.stat().st_size if path.is_file() else 0


def _log_artifact(logger, path: Path, cfg: TrainConfig) -> None:
    from lightning.pytorch.loggers import WandbLogger
    if isinstance(logger, WandbLogger) and cfg.logger.log_prompts and path.exists():
        import wandb
        kind = "model" if path.is_dir() else "prompts"
        artifact = wandb.Artifact(f"{kind}-{logger.experiment.id}", type=kind)
        artifact.add_dir(str(path)) if path.is_dir() else artifact.add_file(str(path))
        logger.experiment.log_artifact(artifact)


# exit status of a run stopped by SIGTERM (128 + 15, as if killed by it): not finished, resumable
PREEMPTED_EXIT_CODE = 143


@hydra.main(config_path="conf", config_name="train", version_base=None)
def main(cfg: DictConfig) -> None:
    run_dir = Path(HydraConfig.get().runtime.output_dir)
    try:
        train(OmegaConf.to_object(cfg), run_dir)
    except SIGTERMException:  # Lightning saved last.ckpt; it would exit with status 0
        log.warning("stopped by SIGTERM; the state is in %s. Resume with the same overrides and "
                    "hydra.run.dir=%s ckpt_path=last", run_dir / "checkpoints" / "last.ckpt",
                    run_dir)
        raise SystemExit(PREEMPTED_EXIT_CODE) from None


if __name__ == "__main__":
    register_configs()
    main()

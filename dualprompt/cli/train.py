"""`python -m dualprompt.train [overrides]`: train prompts, test them, write results.json.

Configs are shipped inside the package (dualprompt/conf); see `--help` for the groups.

Interruptions: checkpoints/last.ckpt is written at the end of every epoch and, on SIGTERM
(preemption), Ctrl-C or an exception, before the process exits; SIGTERM stops at the next batch
with exit status 143. `hydra.run.dir=<the run folder> ckpt_path=last` resumes, mid-epoch
included, and ends like an uninterrupted run with the same seed (tests/test_interruption.py).
"""
from __future__ import annotations

import logging
import time
import warnings
from pathlib import Path
from typing import Optional

import hydra
import lightning as L
from hydra.core.hydra_config import HydraConfig
from lightning.pytorch.utilities.exceptions import SIGTERMException
from omegaconf import DictConfig, OmegaConf

from ..loading import LoadedClip, load_clip
from ..training.callbacks import ExportBestPrompts, GaussianPromptAggregation
from ..training.data_check import check_dataset, format_report, token_counter
from ..training.datamodule import RetrievalDataModule
from ..training.factory import build_logger, build_trainer, eval_trainer, resolve_ckpt_path
from ..training.methods import method_for
from ..training.module import PromptRetrievalModule
from ..training.pictures import Curves, plot_curves, retrieval_examples
from ..training.prepare import prepare_offline_assets
from ..training.results import (base_to_novel, git_revision, results_table, versions,
                                write_clip_benchmark, write_json)
from ..training.schema import ModelConfig, TrainConfig, register_configs
from .errors import user_errors

log = logging.getLogger("dualprompt.train")


def train(cfg: TrainConfig, run_dir: Path) -> dict:
    """One run: training with validation (prompts, adapters or, for full fine-tuning, every
    weight), then the best model and the zero-shot CLIP evaluated on the validation and test
    splits; rank 0 writes results.json."""
    start = time.time()
    _quiet_expected_warnings()
    prepare_offline_assets(cfg.dataset, cfg.model)
    # seeded after the assets: building them (pretraining reseeds and draws from torch's
    # generator) must not make a first run differ from a run on the cache
    L.seed_everything(cfg.seed, workers=True)
    clip = load_base(cfg.model)
    data_check = check_dataset(cfg.dataset, token_counter(clip.tokenizer),
                               clip.model.context_length - cfg.prompt.text_length)
    log.info("data check:\n%s", format_report(data_check))
    data = build_data(cfg, clip)
    method = method_for(cfg.method.trains)
    config = OmegaConf.to_container(OmegaConf.structured(cfg), resolve=True)
    results = {"run_dir": str(run_dir), "method": cfg.method.name}
    zero_shot = PromptRetrievalModule(clip.model, val_domains=data.val_domains(),
                                      test_domains=data.test_domains())
    module, logger, artifact = zero_shot, None, None
    if method.trains_anything:
        model = method.build_model(clip, cfg.prompt, cfg.model, _class_names(cfg, data),
                                   visual_optional=cfg.method.visual_optional)
        module = PromptRetrievalModule(model, loss=cfg.loss, optim=cfg.optim,
                                       val_domains=data.val_domains(),
                                       test_domains=data.test_domains(),
                                       cache_frozen=cfg.cache_frozen)
        artifact, logger = method.artifact(run_dir), build_logger(cfg.logger, run_dir, config)
        results.update(fit(cfg, run_dir, module, data, artifact, method.saver(clip, cfg.model),
                           logger))
        method.restore_best(model, artifact)
        zero_shot.model = method.zero_shot_model(clip, lambda: load_base(cfg.model))
    else:
        results.update(trainable_parameters=0, epochs_trained=0, train_seconds=0.0)
    results.update(data=data.summary(), data_check=data_check)
    tester = eval_trainer(cfg.trainer, run_dir)
    results.update(evaluate_splits(cfg, tester, data, module, zero_shot))
    if cfg.dataset.base_to_novel:
        results["base_to_novel"] = {key: base_to_novel(results[key]) for key in
                                    ("test", "zero_shot") if results.get(key)}
        results["base_classes"] = data.base_classes
    results.update(elapsed_s=round(time.time() - start, 1), config=config, versions=versions(),
                   git_revision=git_revision())
    if tester.is_global_zero:
        report(cfg, run_dir, results, logger, artifact)
        draw(cfg, run_dir, results, data, clip, module, zero_shot)
    return results


def draw(cfg: TrainConfig, run_dir: Path, results: dict, data: RetrievalDataModule,
         clip: LoadedClip, module: PromptRetrievalModule,
         zero_shot: PromptRetrievalModule) -> None:
    """curves.png (when it trained) and retrieval_examples.png on the first test domain."""
    title = f"{cfg.method.name} on {cfg.dataset.name}"
    if results.get("curves"):
        plot_curves(results["curves"], run_dir / "curves.png", title)
    domains = data.test_domains() if cfg.test else []
    if domains:
        models = {"zero-shot CLIP": zero_shot.model}
        if module is not zero_shot:
            models[cfg.method.name] = module.model
        retrieval_examples(run_dir / "retrieval_examples.png", data.domains[domains[0]].test,
                           models, clip.preprocess_val, clip.tokenizer,
                           title=f"{title}, test domain {domains[0]}")


def load_base(model: ModelConfig) -> LoadedClip:
    return load_clip(model.name, model.pretrained, config_file=model.config_file,
                     precision=model.precision, cache_dir=model.cache_dir)


def build_data(cfg: TrainConfig, clip: LoadedClip) -> RetrievalDataModule:
    data = RetrievalDataModule(
        cfg.dataset, tokenizer=clip.tokenizer, train_transform=clip.preprocess_val,
        eval_transform=clip.preprocess_val, batch_size=cfg.data.batch_size,
        eval_batch_size=cfg.data.eval_batch_size, num_workers=cfg.data.num_workers,
        category_level=cfg.loss.category_level, seed=cfg.seed)
    data.setup()
    return data


def fit(cfg: TrainConfig, run_dir: Path, module: PromptRetrievalModule,
        data: RetrievalDataModule, artifact: Path, save, logger) -> dict:
    """Train with validation every epoch; the best epoch by `cfg.monitor` (or, with
    `method.gpa_mean`, the Gaussian-weighted average of the epochs) goes to `artifact`."""
    export = (ExportBestPrompts(artifact, cfg.monitor, save=save) if cfg.method.gpa_mean is None
              else GaussianPromptAggregation(artifact, cfg.method.gpa_mean, cfg.method.gpa_std,
                                             cfg.trainer.max_epochs, save=save))
    curves = Curves()
    trainer = build_trainer(cfg.trainer, run_dir, monitor=cfg.monitor, logger=logger,
                            callbacks=[export, curves])
    fit_start = time.time()
    # weights_only: a checkpoint from elsewhere cannot run code when it is loaded
    trainer.fit(module, datamodule=data, ckpt_path=resolve_ckpt_path(cfg.ckpt_path, run_dir),
                weights_only=True)
    out = {"artifact": str(artifact), "artifact_bytes": _size(artifact),
           "trainable_parameters": module.model.num_trainable_parameters(),
           "epochs_trained": trainer.current_epoch, "curves": curves.history,
           "train_seconds": round(time.time() - fit_start, 1)}
    if artifact.suffix == ".safetensors":
        out["prompt_file"] = str(artifact)
    return out


def evaluate_splits(cfg: TrainConfig, tester: L.Trainer, data: RetrievalDataModule,
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


def report(cfg: TrainConfig, run_dir: Path, results: dict, logger,
           artifact: Optional[Path]) -> None:
    """results.json, the before/after table in the log, the artifact to wandb (rank 0)."""
    write_json(run_dir / "results.json", results)
    if "test" in results:
        for name, per_domain in (("zero_shot", results.get("zero_shot")),
                                 (cfg.method.name, results["test"])):
            if per_domain:
                write_clip_benchmark(run_dir / "clip_benchmark" / name, per_domain,
                                     model=cfg.model.name, pretrained=_pretrained_name(
                                         cfg, None if name == "zero_shot" else artifact))
        columns = {"zero-shot": results.get("zero_shot", {}), cfg.method.name: results["test"]}
        log.info("test Recall@K (%%), best %s by %s:\n%s", cfg.method.name, cfg.monitor,
                 results_table({k: v for k, v in columns.items() if v}))
    for key, domains in results.get("base_to_novel", {}).items():
        for domain, metrics in domains.items():
            log.info("%s %s base-to-novel R@1: %s", key, domain, "; ".join(
                f"{m} base {v['base']:.2f} novel {v['novel']:.2f} HM {v['hm']:.2f}"
                for m, v in metrics.items()))
    log.info("results: %s", run_dir / "results.json")
    if artifact is not None:
        _log_artifact(logger, artifact, cfg)


def _pretrained_name(cfg: TrainConfig, artifact: Optional[Path]) -> str:
    """CLIP_benchmark's `pretrained` column: the weights, plus the prompt file when prompted."""
    base = str(cfg.model.pretrained or "random")
    return base if artifact is None else f"{base} + {artifact.name} ({cfg.method.name})"


def _class_names(cfg: TrainConfig, data: RetrievalDataModule) -> list[str]:
    """CoOp-CSC's classes: those of the training split (none unless the method asks)."""
    if not cfg.method.class_specific:
        return []
    names = data.train_class_names()
    if not names:
        raise ValueError(f"method.class_specific needs class names in the training captions "
                         f"(FDRD class_name); dataset {cfg.dataset.name!r} has none")
    return names


def _quiet_expected_warnings() -> None:
    warnings.filterwarnings("ignore", message=".*module\\(s\\) in eval mode.*")  # the frozen CLIP
    # the data module resumes a mid-epoch checkpoint where it stopped (see its state_dict)
    warnings.filterwarnings("ignore", message=".*checkpoint that ended before the epoch ended.*")


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


@hydra.main(config_path="../conf", config_name="train", version_base=None)
def _main(cfg: DictConfig) -> None:
    run_dir = Path(HydraConfig.get().runtime.output_dir)
    try:
        with user_errors(log):
            train(OmegaConf.to_object(cfg), run_dir)
    except SIGTERMException:  # Lightning saved last.ckpt; it would exit with status 0
        log.warning("stopped by SIGTERM; the state is in %s. Resume with the same overrides and "
                    "hydra.run.dir=%s ckpt_path=last", run_dir / "checkpoints" / "last.ckpt",
                    run_dir)
        raise SystemExit(PREEMPTED_EXIT_CODE) from None


def main() -> None:
    """`python -m dualprompt.train [overrides]` (also the `dualprompt-train` command)."""
    register_configs()
    _main()


if __name__ == "__main__":
    main()

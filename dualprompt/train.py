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

import hydra
import lightning as L
from hydra.core.hydra_config import HydraConfig
from lightning.pytorch.utilities.exceptions import SIGTERMException
from omegaconf import DictConfig, OmegaConf
from safetensors.torch import load_file

from .loading import load_clip
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
    """One run: prompt training with validation, then the best prompts and the zero-shot CLIP
    evaluated on the validation and test splits; rank 0 writes results.json."""
    start = time.time()
    warnings.filterwarnings("ignore", message=".*module\\(s\\) in eval mode.*")  # the frozen CLIP
    # the data module resumes a mid-epoch checkpoint where it stopped (see its state_dict)
    warnings.filterwarnings("ignore", message=".*checkpoint that ended before the epoch ended.*")
    L.seed_everything(cfg.seed, workers=True)
    prepare_offline_assets(cfg.dataset, cfg.model)
    clip = load_clip(cfg.model.name, cfg.model.pretrained, config_file=cfg.model.config_file,
                     precision=cfg.model.precision, cache_dir=cfg.model.cache_dir)
    model = DualPromptCLIP(clip.model, cfg.prompt, tokenizer=clip.tokenizer,
                           trim_context=cfg.model.trim_context)
    data = RetrievalDataModule(
        cfg.dataset, tokenizer=clip.tokenizer, train_transform=clip.preprocess_val,
        eval_transform=clip.preprocess_val, batch_size=cfg.data.batch_size,
        eval_batch_size=cfg.data.eval_batch_size, num_workers=cfg.data.num_workers,
        category_level=cfg.loss.category_level, seed=cfg.seed)
    data.setup()
    module = PromptRetrievalModule(model, loss=cfg.loss, optim=cfg.optim,
                                   val_domains=data.val_domains(),
                                   test_domains=data.test_domains())
    prompt_file = run_dir / "prompts.safetensors"
    config = OmegaConf.to_container(OmegaConf.structured(cfg), resolve=True)
    logger = build_logger(cfg.logger, run_dir, config)
    trainer = build_trainer(cfg.trainer, run_dir, monitor=cfg.monitor, logger=logger,
                            callbacks=[ExportBestPrompts(prompt_file, cfg.monitor)])
    # weights_only: a checkpoint from elsewhere cannot run code when it is loaded
    trainer.fit(module, datamodule=data, ckpt_path=resolve_ckpt_path(cfg.ckpt_path, run_dir),
                weights_only=True)

    results = {"run_dir": str(run_dir), "prompt_file": str(prompt_file),
               "trainable_parameters": model.num_trainable_parameters(),
               "epochs_trained": trainer.current_epoch, "data": data.summary()}
    model.load_state_dict(load_file(str(prompt_file)), strict=False)  # the best prompts
    tester = eval_trainer(cfg.trainer, run_dir)
    zero_shot = PromptRetrievalModule(clip.model, val_domains=data.val_domains(),
                                      test_domains=data.test_domains())
    if data.val_domains():
        tester.validate(module, datamodule=data, verbose=False)
        results["val"] = module.val_results
        if cfg.eval_zero_shot:
            tester.validate(zero_shot, datamodule=data, verbose=False)
            results["zero_shot_val"] = zero_shot.val_results
    if cfg.test and data.test_domains():
        tester.test(module, datamodule=data, verbose=False)
        results["test"] = module.test_results
        if cfg.eval_zero_shot:
            tester.test(zero_shot, datamodule=data, verbose=False)
            results["zero_shot"] = zero_shot.test_results
    results.update(elapsed_s=round(time.time() - start, 1), config=config, versions=versions(),
                   git_revision=git_revision())
    if trainer.is_global_zero:
        write_json(run_dir / "results.json", results)
        if "test" in results:
            columns = {"zero-shot": results.get("zero_shot", {}), "prompted": results["test"]}
            log.info("test Recall@K (%%), best prompts by %s:\n%s", cfg.monitor,
                     results_table({k: v for k, v in columns.items() if v}))
        log.info("results: %s", run_dir / "results.json")
        _log_artifact(logger, prompt_file, cfg)
    return results


def _log_artifact(logger, prompt_file: Path, cfg: TrainConfig) -> None:
    from lightning.pytorch.loggers import WandbLogger
    if isinstance(logger, WandbLogger) and cfg.logger.log_prompts and prompt_file.is_file():
        import wandb
        artifact = wandb.Artifact(f"prompts-{logger.experiment.id}", type="prompts")
        artifact.add_file(str(prompt_file))
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

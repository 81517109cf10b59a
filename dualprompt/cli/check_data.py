"""`python -m dualprompt.check_data dataset=... [keys]`: check the data before the GPU hour.

Takes the same `dataset=` / `model=` keys as training; loads no model (the tokenizer only, for
caption lengths). Prints per domain and split: records, classes, images found and missing,
caption defects, caption lengths against the text window, duplicate images and images shared
across splits. Exits with status 1 when a caption file or an image is missing.
"""
from __future__ import annotations

import logging
from pathlib import Path

import hydra
import open_clip
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, OmegaConf

from ..training.data_check import check_dataset, format_report, token_counter
from ..training.prepare import prepare_offline_assets
from ..training.results import write_json
from ..training.schema import ModelConfig, TrainConfig, register_configs
from .errors import user_errors

log = logging.getLogger("dualprompt.check_data")


def check_data(cfg: TrainConfig, run_dir: Path) -> dict:
    prepare_offline_assets(cfg.dataset, ModelConfig(pretrained=None))  # the data, no model
    tokenizer = tokenizer_of(cfg.model)
    window = getattr(tokenizer, "context_length", 77) - cfg.prompt.text_length
    report = check_dataset(cfg.dataset, token_counter(tokenizer), window)
    log.info("data check of dataset %s:\n%s", cfg.dataset.name, format_report(report))
    write_json(run_dir / "data_check.json", report)
    return report


def tokenizer_of(model: ModelConfig):
    """The model's tokenizer, without its weights; open_clip's default when the name cannot be
    resolved offline (e.g. a local folder not built yet)."""
    try:
        return open_clip.get_tokenizer(model.name)
    except Exception as e:  # hub names offline, a folder not there yet
        log.warning("tokenizer of %s unavailable (%s): caption lengths use open_clip's default",
                    model.name, e)
        return open_clip.get_tokenizer("ViT-B-32")


@hydra.main(config_path="../conf", config_name="train", version_base=None)
def _main(cfg: DictConfig) -> None:
    with user_errors(log):
        report = check_data(OmegaConf.to_object(cfg), Path(HydraConfig.get().runtime.output_dir))
    if report["problems"]:
        raise SystemExit(1)


def main() -> None:
    """`python -m dualprompt.check_data [overrides]` (also `dualprompt-check-data`)."""
    register_configs()
    _main()


if __name__ == "__main__":
    main()

"""`python -m dualprompt.embed input=<folder | captions.json | captions.txt> [prompts=<file>]`.

L2-normalised image and/or caption embeddings of a prompt file (or of the zero-shot CLIP when
`prompts` is null) for a pipeline: `<output>/{image,text}_embeddings.npy` (float32 (N, D)),
`{image,text}_ids.txt` (one id per line, same order), `text_image_ids.txt` for caption files
(the image id of each caption), `manifest.json`, and with `faiss=true` the exact inner-product
indexes `image.faiss` / `text.faiss`. Runs as `Trainer.predict`: several GPUs or nodes give the
same files, in the same order, as one process.
"""
from __future__ import annotations

import hashlib
import logging
import time
from pathlib import Path

import hydra
from hydra.core.hydra_config import HydraConfig
from lightning.pytorch.callbacks import TQDMProgressBar
from omegaconf import DictConfig, OmegaConf
from torch import nn
from torch.utils.data import DataLoader

from .. import towers
from ..loading import load_clip
from ..prompt_file import base_fingerprint
from ..serve import load_prompts
from ..data.embed_inputs import KINDS, Captions, EmbedInputs, ImageFiles, read_inputs
from ..training.embedding import (EmbedModule, import_faiss, write_embeddings,
                                  write_faiss_index, write_lines)
from ..training.factory import eval_trainer
from ..training.prepare import prepare_offline_assets
from ..training.results import git_revision, versions, write_json
from ..training.schema import EmbedConfig, register_configs
from .errors import user_errors

log = logging.getLogger("dualprompt.embed")


def embed(cfg: EmbedConfig, run_dir: Path) -> dict:
    """Embed `cfg.input`; rank 0 writes the files and returns the manifest (others: {})."""
    start = time.time()
    unknown = set(cfg.modalities) - set(KINDS)
    if unknown or not cfg.modalities:
        raise ValueError(f"modalities must be a non-empty subset of {list(KINDS)}, "
                         f"got {list(cfg.modalities)}")
    if cfg.faiss:
        import_faiss()  # fail before the work, not after it
    inputs = read_inputs(cfg.input, cfg.format, image_root=cfg.image_root, split=cfg.split,
                         skip_missing_images=cfg.skip_missing_images)
    kinds = [k for k in KINDS if k in cfg.modalities and _ids(inputs, k)]
    if not kinds:
        raise ValueError(f"{cfg.input} ({inputs.format.value}) has nothing to embed for "
                         f"modalities={list(cfg.modalities)}")

    prepare_offline_assets(None, cfg.model)
    clip = load_clip(cfg.model.name, cfg.model.pretrained, config_file=cfg.model.config_file,
                     precision=cfg.model.precision, cache_dir=cfg.model.cache_dir)
    model = clip.model
    if cfg.prompts:
        model = load_prompts(cfg.prompts, clip.model, trim_context=cfg.model.trim_context,
                             tokenizer=clip.tokenizer)
    datasets = {"image": ImageFiles(inputs.image_paths, clip.preprocess_val),
                "text": Captions(inputs.captions, clip.tokenizer)}
    loaders = [DataLoader(datasets[k], batch_size=cfg.data.eval_batch_size, shuffle=False,
                          num_workers=cfg.data.num_workers) for k in kinds]
    module = EmbedModule(model, kinds, dim=towers.embed_dim(clip.model))
    # explicit tqdm: Lightning would pick a rich progress bar whenever `rich` is installed
    bar = [TQDMProgressBar()] if cfg.trainer.enable_progress_bar else None
    trainer = eval_trainer(cfg.trainer, run_dir, callbacks=bar)
    trainer.predict(module, dataloaders=loaders, return_predictions=False)
    if not trainer.is_global_zero:
        return {}

    out = Path(cfg.output).expanduser() if cfg.output else run_dir
    out.mkdir(parents=True, exist_ok=True)
    files: dict[str, dict[str, str]] = {}
    for kind in kinds:
        files[kind] = write_embeddings(out, kind, module.features[kind], _ids(inputs, kind))
        if cfg.faiss:
            write_faiss_index(out / f"{kind}.faiss", module.features[kind])
            files[kind]["faiss"] = f"{kind}.faiss"
    if "text" in kinds and inputs.text_image_ids is not None:
        write_lines(out / "text_image_ids.txt", inputs.text_image_ids)
        files["text"]["image_ids"] = "text_image_ids.txt"
    manifest = _manifest(cfg, inputs, module, clip.model, files)
    manifest["elapsed_s"] = round(time.time() - start, 1)
    write_json(out / "manifest.json", manifest)
    counts = ", ".join(f"{len(_ids(inputs, k))} {k}s" for k in kinds)
    log.info("embedded %s (dim %d, %s) into %s", counts, module.dim,
             "prompted" if cfg.prompts else "zero-shot", out)
    return manifest


def _ids(inputs: EmbedInputs, kind: str) -> list[str]:
    return inputs.image_ids if kind == "image" else inputs.text_ids


def _manifest(cfg: EmbedConfig, inputs: EmbedInputs, module: EmbedModule, clip: nn.Module,
              files: dict) -> dict:
    prompt_file = None
    if cfg.prompts:
        path = Path(cfg.prompts).expanduser()
        prompt_file = {"path": str(path.resolve()), "config": module.model.config.to_dict(),
                       "sha256": hashlib.sha256(path.read_bytes()).hexdigest()}
    extra = {"faiss": import_faiss().__version__} if cfg.faiss else {}
    return {
        "input": {"path": str(Path(cfg.input).expanduser().resolve()),
                  "format": inputs.format.value, "image_root": cfg.image_root,
                  "split": cfg.split, "skipped_images": inputs.skipped_images},
        "model": {"name": cfg.model.name, "pretrained": cfg.model.pretrained,
                  "config_file": cfg.model.config_file, "precision": cfg.model.precision,
                  "trainer_precision": cfg.trainer.precision},
        "prompt_file": prompt_file,
        "base_fingerprint": base_fingerprint(clip),
        "counts": {k: int(module.features[k].shape[0]) for k in module.kinds},
        "dims": {k: int(module.features[k].shape[1]) for k in module.kinds},
        "dtype": "float32", "normalized": True,
        "faiss_index": "IndexFlatIP" if cfg.faiss else None,
        "files": files,
        "versions": {**versions(), **extra}, "git_revision": git_revision(),
    }


@hydra.main(config_path="../conf", config_name="embed", version_base=None)
def _main(cfg: DictConfig) -> None:
    with user_errors(log):
        embed(OmegaConf.to_object(cfg), Path(HydraConfig.get().runtime.output_dir))


def main() -> None:
    """`python -m dualprompt.embed [overrides]` (also the `dualprompt-embed` command)."""
    register_configs()
    _main()


if __name__ == "__main__":
    main()

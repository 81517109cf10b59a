"""`python -m dualprompt.evaluate prompts=path/to/prompts.safetensors [overrides]`.

Recall@K of a prompt file (or of the zero-shot CLIP when `prompts` is null) on a dataset's
test (or validation) splits, per domain and AVG, written as JSON, with CLIP_benchmark result
files and retrieval_examples.png. `task=classification`: acc1 / acc5 / mean per-class recall of
the images by their class names (training/classification.py), zero-shot beside prompted;
`task=attributes`: accuracy and macro-F1 per attribute (training/attributes.py).
"""
from __future__ import annotations

import dataclasses
import logging
import time
from pathlib import Path

import hydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, OmegaConf

from ..loading import load_clip
from ..serve import load_prompts
from ..training.datamodule import RetrievalDataModule
from ..training.factory import eval_trainer
from ..training.module import PromptRetrievalModule
from ..training.attributes import extract_attributes, load_attributes
from ..training.classification import classify
from ..training.pictures import retrieval_examples
from ..training.prepare import prepare_offline_assets
from ..training.results import (git_revision, results_table, versions, write_clip_benchmark,
                                write_json)
from ..training.schema import EvaluateConfig, Task, register_configs
from .errors import user_errors

log = logging.getLogger("dualprompt.evaluate")


def evaluate(cfg: EvaluateConfig, run_dir: Path) -> dict:
    start = time.time()
    prepare_offline_assets(cfg.dataset, cfg.model)
    clip = load_clip(cfg.model.name, cfg.model.pretrained, config_file=cfg.model.config_file,
                     precision=cfg.model.precision, cache_dir=cfg.model.cache_dir)
    model = clip.model
    if cfg.prompts:
        model = load_prompts(cfg.prompts, clip.model, trim_context=cfg.model.trim_context,
                             tokenizer=clip.tokenizer)
    dataset = cfg.dataset
    if cfg.split == "test":  # only the test galleries are needed
        dataset = dataclasses.replace(dataset, train_domains=[])
    data = RetrievalDataModule(
        dataset, tokenizer=clip.tokenizer, train_transform=clip.preprocess_val,
        eval_transform=clip.preprocess_val, batch_size=cfg.data.batch_size,
        eval_batch_size=cfg.data.eval_batch_size, num_workers=cfg.data.num_workers)
    data.setup()
    if cfg.task != Task.retrieval:
        return _per_domain_task(cfg, run_dir, clip, model, data, start)
    module = PromptRetrievalModule(model, val_domains=data.val_domains(),
                                   test_domains=data.test_domains())
    trainer = eval_trainer(cfg.trainer, run_dir)
    if cfg.split == "test":
        trainer.test(module, datamodule=data, verbose=False)
        results = module.test_results
    else:
        trainer.validate(module, datamodule=data, verbose=False)
        results = module.val_results
    out = {"split": cfg.split, "prompts": cfg.prompts, "results": results,
           "data": data.summary(), "elapsed_s": round(time.time() - start, 1),
           "config": OmegaConf.to_container(OmegaConf.structured(cfg), resolve=True),
           "versions": versions(), "git_revision": git_revision()}
    if trainer.is_global_zero:
        path = Path(cfg.output) if cfg.output else run_dir / "results.json"
        write_json(path, out)
        write_clip_benchmark(path.parent / "clip_benchmark", results, model=cfg.model.name,
                             pretrained=str(cfg.model.pretrained or "random")
                             + (f" + {Path(cfg.prompts).name}" if cfg.prompts else ""))
        if cfg.split == "test" and data.test_domains():
            first = data.test_domains()[0]
            models = {"zero-shot CLIP": clip.model}
            if cfg.prompts:
                models[Path(cfg.prompts).name] = model
            retrieval_examples(path.parent / "retrieval_examples.png",
                               data.domains[first].test, models, clip.preprocess_val,
                               clip.tokenizer, title=f"{cfg.dataset.name}, test domain {first}")
        name = "prompted" if cfg.prompts else "zero-shot"
        log.info("%s Recall@K (%%):\n%s", cfg.split, results_table({name: results}))
        log.info("results: %s", path)
    return out


def _per_domain_task(cfg: EvaluateConfig, run_dir: Path, clip, model,
                     data: RetrievalDataModule, start: float) -> dict:
    """Per domain of the split: the model's classification or attribute metrics, and the
    zero-shot CLIP's beside them when a prompt file is evaluated (one process)."""
    domains = data.test_domains() if cfg.split == "test" else data.val_domains()
    models = {"prompted": model, "zero_shot": clip.model} if cfg.prompts else {
        "zero_shot": clip.model}
    results = {name: {} for name in models}
    for domain in domains:
        samples = getattr(data.domains[domain], str(cfg.split))
        for name, m in models.items():
            if cfg.task == Task.classification:
                results[name][domain] = r = classify(m, samples, clip.preprocess_val,
                                                     clip.tokenizer,
                                                     batch_size=cfg.data.eval_batch_size)
                log.info("%s %s: acc1 %.2f  acc5 %.2f  mean per-class recall %.2f", domain,
                         name, r["acc1"], r["acc5"], r["mean_per_class_recall"])
                continue
            results[name][domain] = r = extract_attributes(
                m, samples, _attributes(cfg, domain, samples), clip.preprocess_val,
                clip.tokenizer, cfg.dataset.attribute_templates, cfg.data.eval_batch_size)
            log.info("%s %s attributes: %s; overall accuracy %.2f, macro-F1 %.2f (%.1f ms an "
                     "image)", domain, name, ", ".join(
                         f"{a} {v['accuracy']:.1f}/{v['macro_f1']:.1f}"
                         for a, v in r["attributes"].items()),
                     r["overall"]["accuracy"], r["overall"]["macro_f1"], r["ms_per_image"])
    out = {"task": str(cfg.task), "split": cfg.split, "prompts": cfg.prompts,
           "results": results.get("prompted", results["zero_shot"]),
           "zero_shot": results["zero_shot"], "data": data.summary(),
           "elapsed_s": round(time.time() - start, 1),
           "config": OmegaConf.to_container(OmegaConf.structured(cfg), resolve=True),
           "versions": versions(), "git_revision": git_revision()}
    path = Path(cfg.output) if cfg.output else run_dir / "results.json"
    write_json(path, out)
    if cfg.task == Task.classification:
        write_clip_benchmark(path.parent / "clip_benchmark", out["results"],
                             model=cfg.model.name, pretrained=str(cfg.model.pretrained or
                                                                  "random")
                             + (f" + {Path(cfg.prompts).name}" if cfg.prompts else ""),
                             task="zeroshot_classification")
    log.info("results: %s", path)
    return out


def _attributes(cfg: EvaluateConfig, domain: str, samples) -> list[dict[str, str]]:
    file = cfg.dataset.domains[domain].attributes
    if not file:
        raise ValueError(f"task=attributes: domain {domain} has no attribute file "
                         f"(dataset.domains.{domain}.attributes: a JSON {{image id: "
                         "{attribute: value}}, relative to the caption folder)")
    base = Path(cfg.dataset.captions or cfg.dataset.root).expanduser()
    return load_attributes(base / file, samples)


@hydra.main(config_path="../conf", config_name="evaluate", version_base=None)
def _main(cfg: DictConfig) -> None:
    with user_errors(log):
        evaluate(OmegaConf.to_object(cfg), Path(HydraConfig.get().runtime.output_dir))


def main() -> None:
    """`python -m dualprompt.evaluate [overrides]` (also the `dualprompt-evaluate` command)."""
    register_configs()
    _main()


if __name__ == "__main__":
    main()

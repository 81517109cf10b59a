"""Validation-only WiSE-FT check for the default: the trained model pulled toward frozen CLIP.

WiSE-FT (Wortsman et al., CVPR 2022) interpolates fine-tuned weights with the zero-shot ones to
keep robustness under distribution shift. The default's additive parts interpolate exactly: a
LoRA delta scaled by w (B <- w B) and an adapter's residual ratio scaled by w are the weights
(1 - w) * frozen + w * trained; the prompt vectors have no zero-shot counterpart and stay. The
paper's other form ensembles outputs: w * the trained model's normalised features + (1 - w) *
the frozen CLIP's, renormalised; for text it would cost nothing at inference (the pool query
is the frozen text feature), for images a second pass. Each run trains the default once on a
recipe_search setting (`test=false`, except transfer, whose "test" gallery is craft's
VALIDATION split), loads its prompt file onto the frozen CLIP and scores validation R@1 with
LoRA and adapters scaled together, LoRA alone, adapters alone, and the text features, or both
towers' features, ensembled.

    python benchmarks/delta_scaling.py --out benchmarks/results --seeds 0 1
    python benchmarks/delta_scaling.py --report-only

Writes delta_scaling.json (every run; finished runs are reused) and delta_scaling.md.
"""
from __future__ import annotations

import argparse
import json
import logging
import statistics
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

import torch
import torch.nn.functional as F
from torch import Tensor
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

from dualprompt import towers
from dualprompt.cli.train import build_data, load_base, train
from dualprompt.model import DualPromptCLIP
from dualprompt.serve import load_prompts
from dualprompt.training.factory import eval_trainer
from dualprompt.training.module import PromptRetrievalModule
from dualprompt.training.results import git_revision, versions, write_json
from dualprompt.training.schema import register_configs
from method_overrides import (ADAPTERS, CONSISTENCY, K1, LORA_R16, NO_TOKEN_LORA,
                              REWEIGHTED_NEGATIVES)
from recipe_search import CONF, GAIN_SETTINGS, R1, SETTINGS, _slug

# the rank-16 default, spelled out so that the label stays true as the default moves
DEFAULT = [*CONSISTENCY, *ADAPTERS, *K1, *REWEIGHTED_NEGATIVES, *LORA_R16, *NO_TOKEN_LORA]
WEIGHTS = (1.0, 0.75, 0.5, 0.25, 0.0)
PARTS = ("LoRA + adapters", "LoRA", "adapters")  # weight space
OUTPUTS = ("text features", "text and image features")  # output space
log = logging.getLogger("benchmarks.delta_scaling")


def run(setting: str, seed: int, out: Path) -> dict:
    transfer = setting.startswith("transfer")
    overrides = ["experiment=world", *SETTINGS[setting], *DEFAULT, f"seed={seed}",
                 "logger=none", "trainer.enable_progress_bar=false",
                 f"test={str(transfer).lower()}"]
    with initialize_config_dir(config_dir=str(CONF), version_base=None):
        cfg = OmegaConf.to_object(compose(config_name="train", overrides=overrides))
    run_dir = out / "runs" / "delta_scaling" / _slug(setting) / f"seed{seed}"
    results = train(cfg, run_dir)
    split = "test" if transfer else "val"
    clip = load_base(cfg.model)
    data = build_data(cfg, clip)
    model = load_prompts(results["prompt_file"], clip.model).eval()
    loras = [m for m in (model.text_lora, model.image_lora) if m is not None]
    adapters = [m for m in (model.text_adapter, model.image_adapter) if m is not None]
    trained_b, trained_ratio = [m.b.detach().clone() for m in loras], [m.ratio for m in adapters]
    scored = {}

    def score(key: str) -> None:  # the model as it stands, on the validation signal
        module = PromptRetrievalModule(model, val_domains=data.val_domains(),
                                       test_domains=data.test_domains())
        tester = eval_trainer(cfg.trainer, run_dir)
        (tester.test if transfer else tester.validate)(module, datamodule=data, verbose=False)
        scored[key] = getattr(module, f"{split}_results")["AVG"]

    for part in PARTS:
        for w in WEIGHTS:
            with torch.no_grad():
                for m, b in zip(loras, trained_b):
                    m.b.copy_(b * (w if "LoRA" in part else 1.0))
            for m, ratio in zip(adapters, trained_ratio):
                m.ratio = ratio * (w if "adapters" in part else 1.0)
            score(f"{part} x {w}")
    with torch.no_grad():
        for m, b in zip(loras, trained_b):
            m.b.copy_(b)
    for m, ratio in zip(adapters, trained_ratio):
        m.ratio = ratio
    for part in OUTPUTS:
        for w in WEIGHTS[1:]:
            with _ensembled(model, w, images=part != OUTPUTS[0]):
                score(f"{part} x {w}")
    zero = results["zero_shot" if transfer else "zero_shot_val"]["AVG"]
    return {"setting": setting, "seed": seed, "overrides": overrides, "val": scored,
            "zero_shot_val": zero, "trained_val": results[split]["AVG"],
            "train_seconds": results["train_seconds"]}


@contextmanager
def _ensembled(model: DualPromptCLIP, w: float, images: bool) -> Iterator[None]:
    """For the block: `model.encode_text` (and, with `images`, `encode_image`) give w * the
    model's normalised features + (1 - w) * the frozen CLIP's, renormalised (always normalised:
    the evaluation asks for that)."""
    text, image = model.encode_text, model.encode_image

    def mix(trained: Tensor, frozen: Tensor) -> Tensor:
        trained, frozen = F.normalize(trained, dim=-1), F.normalize(frozen, dim=-1)
        return F.normalize(w * trained + (1 - w) * frozen, dim=-1)

    model.encode_text = lambda tokens, normalize=False, **kwargs: mix(
        text(tokens, **kwargs), towers.text_features(model.clip, tokens))
    if images:
        model.encode_image = lambda batch, normalize=False: mix(
            image(batch), towers.encode_image(model.clip.visual, batch))
    try:
        yield
    finally:  # back to the class's methods
        del model.encode_text
        if images:
            del model.encode_image


def markdown(runs: list[dict], meta: dict) -> str:
    settings = [s for s in SETTINGS if any(r["setting"] == s for r in runs)]
    seeds = sorted({r["seed"] for r in runs})
    lines = ["# WiSE-FT for the default: the trained model pulled toward the frozen CLIP "
             "(validation only)", "",
             "Mean VALIDATION R@1 image->text / text->image (%) over seeds "
             f"{', '.join(map(str, seeds))}: the rank-16 default trained once per setting and "
             "seed, then scored with its LoRA deltas and/or adapter ratios multiplied by w "
             "(weight space; w = 1: as trained; w = 0: that part removed; the prompts are kept), "
             "or with w * its normalised features + (1 - w) * the frozen CLIP's, renormalised "
             "(output space; text and image features at w = 0 are the frozen CLIP's). "
             "Generated by `python benchmarks/delta_scaling.py`; "
             f"git {meta['git_revision']}. `vs w = 1`: direction comparisons (setting x "
             "direction, seed means) higher / level / lower than the trained model.", "",
             "| scaled | w | " + " | ".join(settings) + " | mean gain over zero-shot | "
             "vs w = 1 |", "|---|---:|" + "---:|" * (len(settings) + 2)]
    zero = {s: next(r["zero_shot_val"] for r in runs if r["setting"] == s) for s in settings}
    lines.append("| zero-shot | | " + " | ".join(
        f"{zero[s]['i2t_R@1']:.2f} / {zero[s]['t2i_R@1']:.2f}" for s in settings) + " | | |")

    def mean(setting: str, key: str) -> dict[str, float]:
        done = [r for r in runs if r["setting"] == setting]
        return {k: statistics.fmean(r["val"][key][k] for r in done) for k in R1}

    base = {s: mean(s, f"{PARTS[0]} x 1.0") for s in settings}  # as trained
    for part in PARTS + OUTPUTS:
        for w in WEIGHTS:
            if w == 1.0 and part != PARTS[0]:
                continue
            key = f"{part} x {w}"
            if not all(key in r["val"] for r in runs if r["setting"] in settings):
                continue
            means = {s: mean(s, key) for s in settings}
            gain = statistics.fmean(means[s][k] - zero[s][k] for s in settings for k in R1)
            diffs = [means[s][k] - base[s][k] for s in settings for k in R1]
            versus = (f"{sum(d > 1e-6 for d in diffs)} / {sum(abs(d) <= 1e-6 for d in diffs)}"
                      f" / {sum(d < -1e-6 for d in diffs)}")
            label = ("none (as trained)" if w == 1.0 else
                     f"{part} (output space)" if part in OUTPUTS else part)
            lines.append(f"| {label} | {w:g} | " + " | ".join(
                f"{means[s]['i2t_R@1']:.2f} / {means[s]['t2i_R@1']:.2f}" for s in settings)
                + f" | {gain:+.2f} | {'' if w == 1.0 else versus} |")
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results"))
    parser.add_argument("--settings", nargs="+", default=GAIN_SETTINGS, choices=list(SETTINGS))
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1])
    parser.add_argument("--report-only", action="store_true",
                        help="rebuild delta_scaling.md from delta_scaling.json, run nothing")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    register_configs()
    args.out.mkdir(parents=True, exist_ok=True)
    path = args.out / "delta_scaling.json"
    runs = json.loads(path.read_text())["runs"] if path.is_file() else []
    if not args.report_only:
        for seed in args.seeds:
            for setting in args.settings:
                if any((r["setting"], r["seed"]) == (setting, seed) for r in runs):
                    continue
                runs.append(run(setting, seed, args.out))
                meta = {"git_revision": git_revision(), "versions": versions()}
                write_json(path, {"meta": meta, "runs": runs})
                log.info("%s / seed %d: %s", setting, seed, {
                    k: f"{v['i2t_R@1']:.2f} / {v['t2i_R@1']:.2f}"
                    for k, v in runs[-1]["val"].items()})
    (args.out / "delta_scaling.md").write_text(
        markdown(runs, json.loads(path.read_text())["meta"]))


if __name__ == "__main__":
    main()

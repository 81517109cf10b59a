"""Pretrain a tiny open_clip CLIP from scratch on the world's generic captions (plain torch).

The result is a folder that open_clip loads on its own:

    <dir>/open_clip_config.json          {"model_cfg": ..., "preprocess_cfg": ...} (hub format)
    <dir>/open_clip_model.safetensors    the CLIP state dict
    <dir>/dualprompt-world-tiny.json     the plain model config (embed_dim, vision_cfg, text_cfg)
    <dir>/pretrain_metrics.json          held-out recall, loss curve, probe accuracies, timing
    <dir>/pretrain_manifest.json         the parameters; `ensure_pretrained_clip` compares it

Load it with `open_clip.create_model_and_transforms("local-dir:" + dir)`, or with
`open_clip.add_model_config(dir + "/dualprompt-world-tiny.json")` and
`open_clip.create_model_and_transforms("dualprompt-world-tiny", pretrained=dir + "/open_clip_model.safetensors")`.
"""

from __future__ import annotations

import json
import logging
import math
import os
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from .. import towers
from ..losses import contrastive_loss
from ..metrics import retrieval_metrics
from ..schedule import linear_warmup_cosine
from .captions import full_caption
from .corpus import PRETRAIN_CORPUS_VERSION, PretrainStream
from .pixels import IMAGE_MEAN, IMAGE_STD, images_to_tensor

log = logging.getLogger(__name__)

MODEL_NAME = "dualprompt-world-tiny"
CONFIG_FILE = "open_clip_config.json"
WEIGHTS_FILE = "open_clip_model.safetensors"
METRICS_FILE = "pretrain_metrics.json"
MANIFEST_FILE = "pretrain_manifest.json"


@dataclass(frozen=True)
class TinyClipConfig:
    """Architecture of the tiny CLIP (mapped onto open_clip's CLIPVisionCfg / CLIPTextCfg)."""

    embed_dim: int = 128  # joint embedding width
    image_size: int = 64  # input side in pixels
    patch_size: int = 8  # ViT patch side; (64 / 8)^2 = 64 patch tokens
    vision_width: int = 128
    vision_layers: int = 3
    vision_head_width: int = 64  # heads = width / head_width
    text_width: int = 128
    text_heads: int = 2
    text_layers: int = 3
    context_length: int = 77  # open_clip's window; captions are trimmed per batch while training
    vocab_size: int = 49408  # the real open_clip BPE vocabulary

    def model_cfg(self) -> dict:
        """The plain open_clip model config (what `add_model_config` reads)."""
        return {
            "embed_dim": self.embed_dim,
            "vision_cfg": {
                "image_size": self.image_size, "patch_size": self.patch_size, "width": self.vision_width,
                "layers": self.vision_layers, "head_width": self.vision_head_width,
            },
            "text_cfg": {
                "context_length": self.context_length, "vocab_size": self.vocab_size, "width": self.text_width,
                "heads": self.text_heads, "layers": self.text_layers,
            },
        }

    def preprocess_cfg(self) -> dict:
        return {"size": self.image_size, "mean": list(IMAGE_MEAN), "std": list(IMAGE_STD),
                "interpolation": "bicubic", "resize_mode": "shortest"}


@dataclass(frozen=True)
class PretrainConfig:
    """Optimisation of the pretraining run."""

    model: TinyClipConfig = field(default_factory=TinyClipConfig)
    steps: int = 700
    batch_size: int = 128
    lr: float = 1e-3
    weight_decay: float = 0.1
    warmup_steps: int = 60
    seed: int = 0
    num_threads: int = 0  # torch threads; 0 = pick the faster of 1 and 2, re-measured as load changes
    eval_pairs: int = 512  # held-out pairs for the final recall
    probe_images: int = 2000  # held-out images for the linear probes (0 disables them)
    save_fp16: bool = False
    log_every: int = 25

    def __post_init__(self) -> None:
        if self.steps < 1 or self.batch_size < 2:
            raise ValueError("steps >= 1 and batch_size >= 2 are required")
        if not 0 <= self.warmup_steps <= self.steps:
            raise ValueError("warmup_steps must lie in [0, steps]")


class ThreadTuner:
    """Chooses the faster of 1 and `max_threads` torch threads while training runs.

    On a shared machine, two threads on two busy cores can run 3-5x slower than one (OpenMP
    threads wait on each other), while on idle cores two threads are faster. A trial times
    `trial` steps at each count and keeps the faster; a new trial starts every `period` steps,
    or sooner when steps become `slowdown` times slower than at the last choice (load changed).
    """

    def __init__(self, max_threads: int, period: int = 100, trial: int = 2, slowdown: float = 1.6):
        self.candidates = sorted({1, max(1, max_threads)})
        self.period, self.trial, self.slowdown = period, trial, slowdown
        self.best = self.candidates[-1]
        self.plan: list[int] = []  # thread counts of the trial steps still to run
        self.times: dict[int, float] = {}
        self.reference = self.recent = 0.0
        self.since_choice = 0
        self.steps_seen = 0

    def next_threads(self) -> int:
        return self.plan[0] if self.plan else self.best

    def _start_trial(self) -> None:
        if len(self.candidates) > 1:
            self.plan = [c for c in self.candidates for _ in range(self.trial)]
            self.times = dict.fromkeys(self.candidates, 0.0)

    def record(self, threads: int, seconds: float) -> None:
        """Report how long the step run with `threads` took."""
        self.steps_seen += 1
        if self.steps_seen == 1:  # the first step pays for allocations: not timed
            self._start_trial()
            return
        if self.plan:
            self.plan.pop(0)
            self.times[threads] += seconds
            if not self.plan:
                self.best = min(self.times, key=self.times.get)
                self.reference = self.recent = self.times[self.best] / self.trial
                self.since_choice = 0
                log.debug("thread trial %s -> %d threads", self.times, self.best)
            return
        self.since_choice += 1
        self.recent = 0.8 * self.recent + 0.2 * seconds if self.recent else seconds
        slower = self.reference and self.recent > self.slowdown * self.reference and self.since_choice >= 10
        if self.since_choice >= self.period or slower:
            self._start_trial()


def encode_text_trimmed(model: torch.nn.Module, text: torch.Tensor) -> torch.Tensor:
    """`model.encode_text` on the batch's shortest sufficient window: (B, 77) ids -> (B, D).

    Exact under the causal mask: positions after a caption's end token never reach its pooled
    (argmax = end token) feature. Trimming is the largest saving of the text tower.
    """
    length = int((text != 0).sum(dim=1).max())
    return towers.text_features(model, text[:, :length])  # (B, D)


def _param_groups(model: torch.nn.Module, weight_decay: float) -> list[dict]:
    # open_clip's convention: no decay on gains, biases, norms and the logit scale.
    exclude = lambda n, p: p.ndim < 2 or "bn" in n or "ln" in n or "bias" in n or "logit_scale" in n
    named = list(model.named_parameters())
    return [
        {"params": [p for n, p in named if exclude(n, p)], "weight_decay": 0.0},
        {"params": [p for n, p in named if not exclude(n, p)], "weight_decay": weight_decay},
    ]


@torch.no_grad()
def heldout_recall(model: torch.nn.Module, tokenizer, seed: int, pairs: int, image_size: int) -> dict[str, float]:
    """R@1 both ways on held-out pairs with full captions (every attribute mentioned), as
    `dualprompt.metrics` counts it (one ground truth per query, ties by index)."""
    stream = PretrainStream(seed, image_size)
    images, _, objects = stream.batch(pairs)
    captions = [full_caption(o) for o in objects]
    image_features = F.normalize(model.encode_image(images_to_tensor(images)), dim=-1)
    text_features = F.normalize(encode_text_trimmed(model, tokenizer(captions)), dim=-1)
    r1 = retrieval_metrics(image_features, text_features, torch.arange(pairs), ks=(1,))
    return {"image_to_text_r1": r1["i2t_R@1"] / 100, "text_to_image_r1": r1["t2i_R@1"] / 100,
            "pairs": pairs, "chance": 1.0 / pairs}


def _manifest(config: PretrainConfig) -> dict:
    return {"pretrain_corpus_version": PRETRAIN_CORPUS_VERSION, "config": json.loads(json.dumps(asdict(config)))}


def _write_model(model: torch.nn.Module, out: Path, config: PretrainConfig) -> None:
    from safetensors.torch import save_file

    dtype = torch.float16 if config.save_fp16 else torch.float32
    state = {k: v.detach().to(dtype).contiguous() for k, v in model.state_dict().items()}
    save_file(state, str(out / WEIGHTS_FILE))
    hub = {"model_cfg": config.model.model_cfg(), "preprocess_cfg": config.model.preprocess_cfg()}
    (out / CONFIG_FILE).write_text(json.dumps(hub, indent=1))
    (out / f"{MODEL_NAME}.json").write_text(json.dumps(config.model.model_cfg(), indent=1))


def _train(model: torch.nn.Module, tokenizer, config: PretrainConfig) -> tuple[list[float], float, int]:
    """The optimisation loop. Returns (loss per step, seconds, thread count chosen last)."""
    tuner = ThreadTuner(config.num_threads or min(2, os.cpu_count() or 1))
    if config.num_threads:  # a fixed count: no trials
        tuner.candidates, tuner.best = [config.num_threads], config.num_threads
    optimizer = torch.optim.AdamW(_param_groups(model, config.weight_decay), lr=config.lr, betas=(0.9, 0.98), eps=1e-6)
    stream = PretrainStream(config.seed, config.model.image_size)
    chance_loss = math.log(config.batch_size)
    losses: list[float] = []
    start = time.perf_counter()
    model.train()
    for step in range(config.steps):
        step_start = time.perf_counter()
        threads = tuner.next_threads()
        torch.set_num_threads(threads)
        for group in optimizer.param_groups:
            group["lr"] = linear_warmup_cosine(step, total_steps=config.steps,
                                               warmup_steps=config.warmup_steps, base_lr=config.lr)
        images, captions, _ = stream.batch(config.batch_size)
        image_features = F.normalize(model.encode_image(images_to_tensor(images)), dim=-1)
        text_features = F.normalize(encode_text_trimmed(model, tokenizer(captions)), dim=-1)
        loss = contrastive_loss(image_features, text_features, model.logit_scale.exp())
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        with torch.no_grad():
            model.logit_scale.clamp_(0, math.log(100))
        losses.append(loss.item())
        tuner.record(threads, time.perf_counter() - step_start)
        if (step + 1) % config.log_every == 0 or step == 0:
            log.info("step %d/%d loss %.3f (chance %.2f) logit_scale %.1f %.2fs/step %d threads", step + 1,
                     config.steps, np.mean(losses[-config.log_every:]), chance_loss, model.logit_scale.exp().item(),
                     (time.perf_counter() - start) / (step + 1), tuner.best)
        if step + 1 == min(150, config.steps) and np.mean(losses[-25:]) > 0.95 * chance_loss:
            log.warning("loss still near ln(batch) = %.2f after %d steps: pretraining is stalling",
                        chance_loss, step + 1)
    model.eval()
    return losses, time.perf_counter() - start, tuner.best


def pretrain_clip(out_dir: str | Path, config: PretrainConfig | None = None) -> dict:
    """Train the tiny CLIP and write it (see module docstring). Returns the metrics dict.

    Runs on torch's global generator seeded with `config.seed` (open_clip initialises from it),
    then gives the caller back its generator state and torch thread count.
    """
    import open_clip

    config = config or PretrainConfig()
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    caller_threads = torch.get_num_threads()
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(config.seed)
        model = open_clip.CLIP(**config.model.model_cfg())
        tokenizer = open_clip.get_tokenizer("ViT-B-32", context_length=config.model.context_length)
        log.info("tiny CLIP: %.2fM parameters", sum(p.numel() for p in model.parameters()) / 1e6)
        metrics, seconds = _train_and_measure(model, tokenizer, config, caller_threads)
    log.info("held-out R@1 i2t %.3f t2i %.3f (chance %.4f); %.0fs", metrics["heldout"]["image_to_text_r1"],
             metrics["heldout"]["text_to_image_r1"], metrics["heldout"]["chance"], seconds)
    _write_model(model, out, config)
    (out / METRICS_FILE).write_text(json.dumps(metrics, indent=1))
    (out / MANIFEST_FILE).write_text(json.dumps(_manifest(config), indent=1))
    return metrics


def _train_and_measure(model: torch.nn.Module, tokenizer, config: PretrainConfig,
                       caller_threads: int) -> tuple[dict, float]:
    """Pretraining plus its held-out recall and probes; the thread count is restored."""
    from .probe import probe_pretrain_attributes

    try:
        losses, seconds, threads = _train(model, tokenizer, config)
        metrics = {
            "steps": config.steps, "batch_size": config.batch_size, "train_seconds": round(seconds, 1),
            "torch_threads_last": threads, "chance_loss": math.log(config.batch_size),
            "loss_first_25": float(np.mean(losses[:25])), "loss_last_50": float(np.mean(losses[-50:])),
            "loss_curve_per_50_steps": [round(float(np.mean(losses[i:i + 50])), 4) for i in range(0, len(losses), 50)],
            "heldout": heldout_recall(model, tokenizer, config.seed + 10_000, config.eval_pairs,
                                      config.model.image_size),
        }
        if config.probe_images > 0:
            metrics["probes"] = probe_pretrain_attributes(model, config.seed + 20_000, config.probe_images,
                                                          config.model.image_size)
    finally:
        torch.set_num_threads(caller_threads)
    return metrics, seconds


def is_cached(cache_dir: str | Path, config: PretrainConfig | None = None) -> bool:
    """True when `cache_dir` holds a finished run made with exactly `config`."""
    out = Path(cache_dir)
    manifest = out / MANIFEST_FILE
    files = [out / CONFIG_FILE, out / WEIGHTS_FILE, out / f"{MODEL_NAME}.json"]
    if not manifest.is_file() or not all(f.is_file() for f in files):
        return False
    return json.loads(manifest.read_text()) == _manifest(config or PretrainConfig())


def ensure_pretrained_clip(cache_dir: str | Path, config: PretrainConfig | None = None) -> Path:
    """The folder of a pretrained tiny CLIP, training it first unless already cached there."""
    out = Path(cache_dir)
    if is_cached(out, config):
        log.info("pretrained world CLIP found in %s", out)
        return out
    (out / MANIFEST_FILE).unlink(missing_ok=True)  # an interrupted run must not look finished
    log.info("pretraining the world CLIP into %s", out)
    pretrain_clip(out, config)
    return out

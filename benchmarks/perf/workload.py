"""The timed workload: one CLIP, one batch of FDRD-length captions, and the steps compared.

Everything here is a building block of `run.py`; `tests/test_perf_bench.py` runs the same
blocks on a tiny model and checks the equalities (never the timings).
"""
from __future__ import annotations

import copy
import json
import random
import warnings
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Callable, Optional

import open_clip
import torch
from torch import Tensor, nn

from dualprompt import DualPromptCLIP, PromptConfig, category_loss, category_weights
from dualprompt import contrastive_loss
from dualprompt.data.datasets import TrainBatch
from dualprompt.training.module import PromptRetrievalModule
from dualprompt.training.schema import LossConfig

SOT, EOT = 49406, 49407
NEGATIVES = 4  # per image, as in FDRD
# Token lengths (SOT and EOT included) of 3,000 random FDRD records with 4 shipped negatives
# (flower, pets, plane), 5 captions each (mean 31.0, median 29): {length: count}. Used when
# ../shared/fdrd is absent.
SYNTHETIC_LENGTHS = {
    13: 2, 14: 12, 15: 57, 16: 110, 17: 146, 18: 246, 19: 375, 20: 490, 21: 606, 22: 709,
    23: 833, 24: 839, 25: 790, 26: 686, 27: 663, 28: 590, 29: 547, 30: 495, 31: 477, 32: 406,
    33: 394, 34: 399, 35: 396, 36: 352, 37: 398, 38: 356, 39: 391, 40: 361, 41: 374, 42: 345,
    43: 335, 44: 359, 45: 294, 46: 292, 47: 184, 48: 220, 49: 146, 50: 109, 51: 84, 52: 53,
    53: 33, 54: 30, 55: 7, 57: 4, 58: 3, 60: 2,
}


# -- captions ----------------------------------------------------------------------------
@dataclass
class Captions:
    """Positive (B, 77) and negative (B, K, 77) token ids and where their lengths come from."""

    positive: Tensor
    negative: Tensor
    source: str  # "fdrd" (real captions) or "synthetic" (SYNTHETIC_LENGTHS)
    stats: dict


def fdrd_records(root: Path) -> list[tuple[str, list[str]]]:
    """(positive, 4 negatives) of every record of root/*.json that ships >= 4 negatives."""
    records = []
    for path in sorted(root.glob("*.json")):
        for record in json.loads(path.read_text()).values():
            negatives = record.get("negative") or []
            if len(negatives) >= NEGATIVES:
                records.append((record["positive"], list(negatives[:NEGATIVES])))
    return records


def length_stats(lengths: Tensor) -> dict:
    """Summary of (N,) token lengths (SOT and EOT included)."""
    x = lengths.float()
    return {"n": int(x.numel()), "mean": round(x.mean().item(), 2),
            "median": x.median().item(), "p95": x.quantile(0.95).item(),
            "min": int(x.min()), "max": int(x.max())}


def sample_captions(batch_size: int, fdrd_root: Optional[Path], seed: int = 0,
                    context_length: int = 77) -> Captions:
    """`batch_size` records of a positive and 4 negatives, tokenized and padded to 77.

    With the FDRD caption files: real records drawn at random (their captions tokenized by
    open_clip's tokenizer). Without: random token ids with lengths drawn from
    `SYNTHETIC_LENGTHS`, one per caption.
    """
    rng = random.Random(seed)
    n = batch_size * (1 + NEGATIVES)
    if fdrd_root is not None and fdrd_root.is_dir() and any(fdrd_root.glob("*.json")):
        records = fdrd_records(fdrd_root)
        picked = rng.sample(records, batch_size)
        tokenizer = open_clip.get_tokenizer("ViT-B-32")
        tokens = tokenizer([c for p, negs in picked for c in [p, *negs]])  # (n, 77)
        sample = rng.sample(records, min(2000, len(records)))
        population = tokenizer([c for p, negs in sample for c in [p, *negs]]).argmax(-1) + 1
        source = "fdrd"
    else:
        lengths, counts = zip(*SYNTHETIC_LENGTHS.items())
        drawn = rng.choices(lengths, weights=counts, k=n)
        tokens = torch.zeros(n, context_length, dtype=torch.long)
        gen = torch.Generator().manual_seed(seed)
        for i, length in enumerate(drawn):
            tokens[i, 0], tokens[i, length - 1] = SOT, EOT
            tokens[i, 1:length - 1] = torch.randint(300, 49000, (length - 2,), generator=gen)
        population = torch.tensor(rng.choices(lengths, weights=counts, k=10_000))
        source = "synthetic"
    tokens = tokens.view(batch_size, 1 + NEGATIVES, -1)
    lengths = tokens.argmax(-1) + 1  # (B, 1+K)
    stats = {"population": length_stats(population), "batch": length_stats(lengths.flatten()),
             "batch_longest": int(lengths.max())}
    return Captions(tokens[:, 0].contiguous(), tokens[:, 1:].contiguous(), source, stats)


def make_batch(captions: Captions, image_size: tuple[int, int], seed: int = 0,
               categories: int = 4, negatives: int = NEGATIVES) -> TrainBatch:
    """A training batch as `RetrievalDataModule` makes it: random images, the captions, the
    first `negatives` negatives of each image (all present), categories drawn so some
    negatives share the image's category, and each row's image and caption index (what the
    module's caches of frozen features are keyed on)."""
    gen = torch.Generator().manual_seed(seed)
    b = captions.negative.shape[0]
    k = min(negatives, captions.negative.shape[1])
    return TrainBatch(image=torch.randn(b, 3, *image_size, generator=gen),
                      tokens=captions.positive,
                      negative_tokens=captions.negative[:, :k].contiguous(),
                      negative_mask=torch.ones(b, k, dtype=torch.bool),
                      negative_categories=torch.randint(0, categories, (b, k), generator=gen),
                      category=torch.randint(0, categories, (b,), generator=gen),
                      index=torch.arange(b), caption=torch.zeros(b, dtype=torch.long))


def to_device(batch: TrainBatch, device: torch.device) -> TrainBatch:
    return TrainBatch(**{f.name: getattr(batch, f.name).to(device) for f in fields(batch)})


# -- the default method ----------------------------------------------------------------------
def default_method() -> tuple[PromptConfig, LossConfig, int]:
    """The default method as a run without overrides composes it (conf/train.yaml): its
    prompt and loss configs and its number of negatives per image."""
    from hydra import compose, initialize_config_dir
    from omegaconf import OmegaConf

    import dualprompt
    from dualprompt.training.schema import register_configs
    register_configs()
    conf = Path(dualprompt.__file__).parent / "conf"
    with initialize_config_dir(config_dir=str(conf), version_base=None):
        cfg = OmegaConf.to_object(compose(config_name="train"))
    return cfg.prompt, cfg.loss, cfg.dataset.negatives.k


# -- the variants of the prompt step ---------------------------------------------------------
@dataclass(frozen=True)
class Optimisations:
    """The exact savings of the prompt step, each switchable (all off = the reference step)."""

    trim_context: bool = True  # DualPromptCLIP: drop columns after the longest caption
    length_buckets: int = 4  # DualPromptCLIP: encode captions in groups of similar length
    share_frozen_text: bool = True  # module: one frozen text pass for re-weighting and pool key
    cache_blank_image: bool = True  # module: blank-image features computed once
    # module: token weights, pool queries and the consistency terms' frozen features kept
    # after their first computation (a training step from the second epoch on)
    cache_frozen: bool = True


REFERENCE = Optimisations(False, 1, False, False, False)
# cumulative: each row adds one saving to the one above
PROMPT_VARIANTS: dict[str, Optimisations] = {
    "reference prompt step": REFERENCE,
    "+ trim_context": Optimisations(True, 1, False, False, False),
    "+ length_buckets": Optimisations(True, 4, False, False, False),
    "+ share_frozen_text": Optimisations(True, 4, True, False, False),
    "+ cache_blank_image (first epoch)": Optimisations(True, 4, True, True, False),
    "dualprompt step": Optimisations(),  # + cache_frozen: everything on (epochs 2+)
}


def supported(opt: Optimisations) -> dict[str, bool]:
    """Which switches this checkout's DualPromptCLIP / module accept (older code: fewer)."""
    import inspect
    model_args = inspect.signature(DualPromptCLIP.__init__).parameters
    module_args = inspect.signature(PromptRetrievalModule.__init__).parameters
    return {name: name in model_args or name in module_args for name in asdict(opt)}


def prompt_module(clip: nn.Module, opt: Optimisations, config: Optional[PromptConfig] = None,
                  loss: Optional[LossConfig] = None) -> PromptRetrievalModule:
    """The product's training module on `clip` with the given savings; `config` and `loss`
    default to the default method's (`default_method`).

    The CLIP is shared, not copied: every variant runs on the same frozen weights."""
    if config is None or loss is None:
        default_prompt, default_loss, _ = default_method()
        config, loss = config or default_prompt, loss or default_loss
    ok = supported(opt)
    model_kwargs = {k: v for k, v in asdict(opt).items()
                    if k in ("trim_context", "length_buckets") and ok[k]}
    module_kwargs = {k: v for k, v in asdict(opt).items()
                     if k in ("share_frozen_text", "cache_blank_image", "cache_frozen") and ok[k]}
    torch.manual_seed(0)  # same prompt init in every variant
    model = DualPromptCLIP(clip, config, **model_kwargs)
    return PromptRetrievalModule(model, loss=loss, **module_kwargs)


def prompt_optimizer(module: PromptRetrievalModule) -> torch.optim.Optimizer:
    return torch.optim.AdamW([p for p in module.parameters() if p.requires_grad], lr=2e-3)


def prompt_step(module: PromptRetrievalModule, optimizer: torch.optim.Optimizer,
                batch: TrainBatch) -> float:
    """One training step as Lightning runs it: training_step, backward, optimizer step."""
    with warnings.catch_warnings():  # self.log without a Trainer: a warning, nothing logged
        warnings.simplefilter("ignore")
        loss = module.training_step(batch, 0)
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()
    return loss.item()


def prompt_loss(module: PromptRetrievalModule, batch: TrainBatch) -> Tensor:
    """The dcar loss of the batch (no step), for the exactness checks."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return module.training_step(batch, 0)


# -- full fine-tuning and the frozen forward ------------------------------------------------
def finetune_model(clip: nn.Module) -> nn.Module:
    """A trainable copy of the CLIP (all weights)."""
    model = copy.deepcopy(clip)
    model.requires_grad_(True)
    return model.train()


def finetune_optimizer(model: nn.Module) -> torch.optim.Optimizer:
    return torch.optim.AdamW(model.parameters(), lr=1e-5, weight_decay=0.1)


def finetune_loss(clip: nn.Module, batch: TrainBatch, alpha: float = 0.5) -> Tensor:
    """InfoNCE + category-aware negatives (the batch's) with plain open_clip (77-token
    context), positives and negatives encoded in one pass: what a user fine-tuning CLIP on
    FDRD would run."""
    images, positive, negative = batch.image, batch.tokens, batch.negative_tokens
    b, k = negative.shape[:2]
    image_features = clip.encode_image(images, normalize=True)
    text = clip.encode_text(torch.cat([positive, negative.flatten(0, 1)]), normalize=True)
    text_features, negatives = text[:b], text[b:].view(b, k, -1)
    scale = clip.logit_scale.exp().float()
    weights = category_weights(batch.negative_categories, batch.category, alpha)
    return (contrastive_loss(image_features, text_features, scale)
            + category_loss(image_features, text_features, negatives, scale, weights,
                            batch.negative_mask))


def finetune_step(clip: nn.Module, optimizer: torch.optim.Optimizer,
                  batch: TrainBatch) -> float:
    loss = finetune_loss(clip, batch)
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()
    return loss.item()


@torch.no_grad()
def frozen_forward(clip: nn.Module, batch: TrainBatch) -> Tensor:
    """The frozen CLIP's forward of the step's inputs (images, positives and negatives, 77
    tokens)."""
    text = torch.cat([batch.tokens, batch.negative_tokens.flatten(0, 1)])
    image_features = clip.encode_image(batch.image)
    return image_features.sum() + clip.encode_text(text).sum()


# -- inference ---------------------------------------------------------------------------------
def inference_calls(clip: nn.Module, model: DualPromptCLIP, images: Tensor,
                    text: Tensor) -> dict[str, Callable[[], Tensor]]:
    """encode_text / encode_image of the prompted model and of plain open_clip, no grad."""
    def no_grad(fn, x):
        def call():
            with torch.no_grad():
                return fn(x)
        return call
    return {"open_clip encode_text": no_grad(clip.encode_text, text),
            "DualPromptCLIP encode_text": no_grad(model.encode_text, text),
            "open_clip encode_image": no_grad(clip.encode_image, images),
            "DualPromptCLIP encode_image": no_grad(model.encode_image, images)}

"""The two corpora of the world: a pretraining stream and downstream FDRD-style domains.

- `PretrainStream`: endless (image, generic caption) pairs drawn from the whole attribute space
  with flat backgrounds; captions mention a random subset of the attributes, so that no single
  easy attribute (background, size) is enough to match a caption to its image.
- `build_world`: writes downstream domains to disk in the FDRD JSON layout,
  `<root>/<domain>/images/*.png`, `<root>/<domain>/{train,val,test}.json`, plus
  `classes.json` (class -> meta-category) and `attributes.json` (image id -> attributes).
  A manifest of the parameters makes a rebuild with the same parameters a no-op.
"""

from __future__ import annotations

import json
import logging
import re
import shutil
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from .captions import downstream_description, positive_caption, pretrain_caption
from .render import render
from .spec import (
    DOMAIN_NAMES,
    DOMAINS,
    PRETRAIN_STYLE,
    Domain,
    FineClass,
    ObjectSpec,
    make_domain,
    sample_class_object,
    sample_object,
)

log = logging.getLogger(__name__)

WORLD_VERSION = 4  # bump when the downstream domains change (rendering, wording, names)
PRETRAIN_CORPUS_VERSION = 1  # bump when the pretraining images or captions change (retrains the CLIP)
SPLITS = ("train", "val", "test")
MANIFEST = "world_manifest.json"

# How often pretraining captions mention each attribute (shape falls back to the word "shape").
# Position stays a silent nuisance: a tiny ViT does not learn it in a few hundred steps, and a
# caption word that the image tower cannot see only adds noise.
PRETRAIN_MENTION: dict[str, float] = {
    "shape": 0.95, "color": 0.85, "shade": 0.6, "pattern": 0.85, "size": 0.6, "position": 0.0,
    "background": 0.4,
}
# How often downstream descriptions mention each attribute; the class name carries the rest
# (shape, i.e. the family, and sometimes the pattern), as in FDRD where descriptions are partial.
DOWNSTREAM_MENTION: dict[str, float] = {
    "shape": 0.4, "color": 0.85, "shade": 0.85, "pattern": 0.6, "size": 0.9, "position": 0.0,
    "background": 0.9,
}


class PretrainStream:
    """Deterministic endless stream of pretraining pairs.

    Args:
        seed: stream seed; two streams with the same seed yield the same batches.
        image_size: side of the rendered images in pixels.
        mention_probs: per-attribute probability that a caption mentions it.
    """

    def __init__(self, seed: int, image_size: int = 64, mention_probs: dict[str, float] | None = None):
        self.rng = np.random.default_rng(seed)
        self.image_size = image_size
        self.mention_probs = dict(PRETRAIN_MENTION if mention_probs is None else mention_probs)

    def batch(self, batch_size: int) -> tuple[np.ndarray, list[str], list[ObjectSpec]]:
        """Returns images (B, H, W, 3) uint8, captions (B,) and the objects drawn."""
        objects = [sample_object(self.rng) for _ in range(batch_size)]
        images = np.stack([np.asarray(render(o, PRETRAIN_STYLE, self.rng, self.image_size)) for o in objects])
        captions = [pretrain_caption(o, self.rng, self.mention_probs) for o in objects]
        return images, captions, objects


@dataclass(frozen=True)
class WorldConfig:
    """Parameters of the downstream domains; the manifest stores exactly these."""

    seed: int = 0
    image_size: int = 64
    domains: tuple[str, ...] = DOMAIN_NAMES
    colors_per_family: int = 2
    patterns_per_family: int = 2
    train_per_domain: int = 384
    val_per_domain: int = 160
    test_per_domain: int = 256
    num_negatives: int = 4
    mention_probs: dict[str, float] = field(default_factory=lambda: dict(DOWNSTREAM_MENTION))

    def __post_init__(self) -> None:
        unknown = set(self.domains) - set(DOMAIN_NAMES)
        if unknown:
            raise ValueError(f"unknown domains {sorted(unknown)}; known: {DOMAIN_NAMES}")
        if min(self.train_per_domain, self.val_per_domain, self.test_per_domain) < 1:
            raise ValueError("every split needs at least one image")
        if self.num_negatives < 1:
            raise ValueError("num_negatives must be >= 1")

    def split_size(self, split: str) -> int:
        return {"train": self.train_per_domain, "val": self.val_per_domain, "test": self.test_per_domain}[split]


def pretrain_token_ids() -> set[int]:
    """Token ids used by any pretraining caption (class names must avoid them)."""
    from open_clip import get_tokenizer  # lazy: the renderer does not need torch

    from .captions import PRETRAIN_TEMPLATES
    from .spec import ATTRIBUTES, PATTERN_NOUNS, POSITION_PHRASES

    words = [w for values in ATTRIBUTES.values() for w in values]
    words += list(PATTERN_NOUNS.values()) + list(POSITION_PHRASES.values()) + ["shape"]
    plain = re.sub(r"\[\w+:|\]", " ", " ".join(PRETRAIN_TEMPLATES))  # drop the slot syntax
    words += [t for t in plain.split() if "{" not in t]
    tokenizer = get_tokenizer("ViT-B-32")
    return {i for w in words for i in tokenizer.encode(w)}


def make_domains(config: WorldConfig) -> list[Domain]:
    """The fine classes of every configured domain (names drawn from the world seed)."""
    from open_clip import get_tokenizer

    tokenizer = get_tokenizer("ViT-B-32")
    banned = pretrain_token_ids()
    taken: set[str] = set()  # names are unique across domains (cross-domain splits mix them)

    def is_name_ok(name: str) -> bool:
        low = name.lower()
        return not (set(tokenizer.encode(name)) & banned) and not any(low in t or t in low for t in taken)

    domains = []
    for index, definition in enumerate(DOMAINS):
        if definition.name not in config.domains:
            continue
        rng = np.random.default_rng([config.seed, index, 1000])
        domain = make_domain(definition, rng, config.colors_per_family, config.patterns_per_family, is_name_ok)
        taken |= {c.name.lower() for c in domain.classes} | {c.meta for c in domain.classes}
        domains.append(domain)
    return domains


def _negatives(fine: FineClass, domain: Domain, k: int, rng: np.random.Generator) -> list[str]:
    """k other class names: siblings (same meta-category) first, then other families."""
    siblings = [c.name for c in domain.siblings(fine)]
    others = [c.name for c in domain.classes if c.meta != fine.meta]
    names = list(rng.permutation(siblings))[:k]
    names += list(rng.permutation(others))[: k - len(names)]
    return [str(n) for n in rng.permutation(names)]


def _slug(name: str) -> str:
    return "".join(ch if ch.isalnum() else "_" for ch in name.lower())


def build_domain(domain: Domain, index: int, root: Path, config: WorldConfig) -> None:
    """Render and write one domain (images, split JSONs, classes.json, attributes.json)."""
    out = root / domain.name
    if out.exists():
        shutil.rmtree(out)
    (out / "images").mkdir(parents=True)
    definition = domain.definition
    attributes: dict[str, dict[str, str]] = {}
    for split_index, split in enumerate(SPLITS):
        n = config.split_size(split)
        order_rng = np.random.default_rng([config.seed, index, split_index, 2000])
        labels = order_rng.permutation(np.arange(n) % len(domain.classes))  # balanced classes
        records = {}
        for i, label in enumerate(labels):
            fine = domain.classes[int(label)]
            rng = np.random.default_rng([config.seed, index, split_index, i])
            obj = sample_class_object(fine, rng, definition.backgrounds)
            image = render(obj, definition.style, rng, config.image_size)
            key = f"{_slug(fine.name)}_{split}_{i:04d}"
            file_name = f"{key}.png"
            image.save(out / "images" / file_name)
            description = downstream_description(obj, definition.noun, definition.wording, rng, config.mention_probs)
            records[key] = {
                "file_name": file_name,
                "class_name": fine.name,
                "file_path": f"images/{file_name}",
                "positive": positive_caption(fine.name, description),
                "negative": [positive_caption(name, description)
                             for name in _negatives(fine, domain, config.num_negatives, rng)],
            }
            attributes[key] = {"split": split, "class_name": fine.name, "meta": fine.meta, **obj.as_dict()}
        (out / f"{split}.json").write_text(json.dumps(records, indent=1))
    (out / "classes.json").write_text(json.dumps({c.name: c.meta for c in domain.classes}, indent=1))
    (out / "attributes.json").write_text(json.dumps(attributes, indent=1))


def _manifest(config: WorldConfig) -> dict:
    return {"world_version": WORLD_VERSION, "config": json.loads(json.dumps(asdict(config)))}


def build_world(root: str | Path, config: WorldConfig | None = None, force: bool = False) -> Path:
    """Write the downstream domains under `root`; a no-op when the manifest already matches.

    Returns the root. Layout: `<root>/<domain>/{images/, train.json, val.json, test.json,
    classes.json, attributes.json}` and `<root>/world_manifest.json`. A rebuild deletes and
    rewrites each `<root>/<domain>` folder it owns.
    """
    config = config or WorldConfig()
    root = Path(root)
    manifest = _manifest(config)
    manifest_path = root / MANIFEST
    if not force and manifest_path.is_file() and json.loads(manifest_path.read_text()) == manifest:
        log.info("world at %s is up to date", root)
        return root
    root.mkdir(parents=True, exist_ok=True)
    manifest_path.unlink(missing_ok=True)  # an interrupted build must not look complete
    domains = make_domains(config)
    for domain in domains:
        index = DOMAIN_NAMES.index(domain.name)
        log.info("building domain %s: %d classes", domain.name, len(domain.classes))
        build_domain(domain, index, root, config)
    manifest_path.write_text(json.dumps(manifest, indent=1))
    return root

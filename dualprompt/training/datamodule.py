"""`RetrievalDataModule`: FDRD, Karpathy, CSV/JSONL and WebDataset domains as Lightning
loaders."""
from __future__ import annotations

import dataclasses
import functools
import json
import logging
import os
import signal
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional

import lightning as L
from lightning.fabric.utilities.seed import pl_worker_init_function
from torch.utils.data import DataLoader

from ..data import ImageRecord, clean_negatives, load_fdrd_json, load_karpathy_json
from ..data.custom import load_table
from ..data.datasets import (EpochShuffle, Gallery, Sample, TrainPairs, check_image,
                             collate_gallery, collate_pairs, few_shot, split_validation)
from ..data.images import ImageIndex
from ..data.shards import ShardGallery, ShardPairs, read_shard_records
from ..data.records import CaptionFormat
from .schema import CategoryLevel, DatasetConfig, DomainConfig

log = logging.getLogger(__name__)


@dataclass
class DomainSplits:
    train: list[Sample]
    val: list[Sample]
    test: list[Sample]


class RetrievalDataModule(L.LightningDataModule):
    """Train on the union of `train_domains`; validate on their val splits (model selection);
    test on each of `test_domains` with its own gallery (per-domain Recall@K and AVG)."""

    def __init__(self, dataset: DatasetConfig, *, tokenizer: Callable, train_transform: Callable,
                 eval_transform: Callable, batch_size: int, eval_batch_size: int,
                 num_workers: int, category_level: CategoryLevel = CategoryLevel.fine,
                 seed: int = 0) -> None:
        super().__init__()
        category_level = CategoryLevel(category_level)
        self.cfg, self.tokenizer = dataset, tokenizer
        self.train_transform, self.eval_transform = train_transform, eval_transform
        self.batch_size, self.eval_batch_size = batch_size, eval_batch_size
        self.num_workers, self.category_level, self.seed = num_workers, category_level, seed
        self.domains: dict[str, DomainSplits] = {}
        self.skipped: dict[str, int] = {}
        self.reports: dict[str, object] = {}  # "domain/split" -> FdrdReport / NegativeReport
        self.overlaps: dict[str, dict[str, int]] = {}  # domain -> {"train/test images": n, ...}
        self._resume: dict[str, int] = {}  # from a checkpoint, see `state_dict`
        self.base_classes: dict[str, list[str]] = {}  # base_to_novel: domain -> base classes

    # -- building ------------------------------------------------------------------------
    def setup(self, stage: Optional[str] = None) -> None:
        if self.domains:
            return
        cfg = self.cfg
        unknown = [d for d in [*cfg.train_domains, *cfg.test_domains] if d not in cfg.domains]
        if unknown:
            raise ValueError(f"dataset {cfg.name}: domains {unknown} are not defined in "
                             f"dataset.domains ({sorted(cfg.domains)})")
        if not cfg.train_domains and not cfg.test_domains:
            raise ValueError(f"dataset {cfg.name}: no train_domains and no test_domains")
        categories: dict[str, int] = {}
        for name in dict.fromkeys([*cfg.train_domains, *cfg.test_domains]):
            self.domains[name] = self._build_domain(name, cfg.domains[name], categories,
                                                    train=name in cfg.train_domains)
        if self.skipped:
            log.warning("skipped %d unusable images (dataset.skip_bad_images=true): %s",
                        sum(self.skipped.values()), self.skipped)
        if cfg.base_to_novel:
            self._split_base_and_novel()

    def _base(self, name: str, records: list[ImageRecord]) -> set[str]:
        """CoCoOp's base classes of a domain: the first half of its classes sorted by name
        (the larger half when odd); the rest are novel."""
        classes = sorted({r.class_name for r in records if r.class_name})
        if len(classes) < 2 or any(not r.class_name for r in records):
            raise ValueError(f"dataset.base_to_novel: domain {name} needs a class per record "
                             f"and at least 2 classes (has {len(classes)})")
        base = classes[:-(-len(classes) // 2)]
        self.base_classes[name] = base
        log.info("domain %s base-to-novel: %d base classes (%s ...), %d novel", name,
                 len(base), ", ".join(base[:3]), len(classes) - len(base))
        return set(base)

    def _split_base_and_novel(self) -> None:
        """The test split of each test domain as two galleries, `<domain>/base` and
        `<domain>/novel`, each holding only its classes."""
        for name in self.cfg.test_domains:
            base = set(self.base_classes[name])
            test = self.domains[name].test
            self.domains[f"{name}/base"] = DomainSplits(
                [], [], [s for s in test if s.record.class_name in base])
            self.domains[f"{name}/novel"] = DomainSplits(
                [], [], [s for s in test if s.record.class_name not in base])

    def _build_domain(self, name: str, dom: DomainConfig, categories: dict[str, int],
                      train: bool) -> DomainSplits:
        root = Path(self.cfg.root).expanduser()
        train_records = self._records(root, name, dom, "train") if train else []
        val_records = self._records(root, name, dom, "val") if train and dom.val else []
        test_records = (self._records(root, name, dom, "test")
                        if name in self.cfg.test_domains else [])
        if train and not dom.val:
            train_records, val_records = split_validation(train_records, self.cfg.val_fraction,
                                                          self.seed)
        if train and self.cfg.shots:  # and, as CoOp, a min(K, 4)-shot validation split
            train_records = few_shot(train_records, self.cfg.shots, self.seed, f"domain {name}")
            if self.cfg.few_shot_val:
                val_records = few_shot(val_records, min(self.cfg.shots, 4), self.seed,
                                       f"domain {name} val")
        if self.cfg.base_to_novel:  # before negatives: training never names a novel class
            base = self._base(name, train_records + val_records + test_records)
            train_records = [r for r in train_records if r.class_name in base]
            val_records = [r for r in val_records if r.class_name in base]
        meta = self._meta_categories(root, dom)
        with_classes = dom.format != CaptionFormat.karpathy
        if train_records and with_classes and not any(r.class_name for r in train_records):
            with_classes = False
            self.reports[f"{name}/negatives"] = {"off": "no class column (dataset.class_key)"}
            log.warning("domain %s has no classes (dataset.class_key): no class-swap or "
                        "attribute-swap negatives, so the category-aware loss is off", name)
        if train_records and with_classes and self.cfg.negatives.k > 0:
            classes = sorted({r.class_name for r in train_records if r.class_name})
            train_records, report = clean_negatives(
                train_records, classes, k=self.cfg.negatives.k, meta_category=meta,
                seed=self.seed, attribute_swap=self.cfg.negatives.attribute_swap)
            self.reports[f"{name}/negatives"] = report
        shards = dom.format == CaptionFormat.webdataset
        index = None if shards else ImageIndex(root / dom.images)

        def category(class_name: Optional[str]) -> int:
            if not class_name:
                return -1
            key = (meta.get(class_name, class_name) if self.category_level == CategoryLevel.meta
                   else class_name)
            return categories.setdefault(f"{name}/{key}", len(categories))

        def samples(records: list[ImageRecord], split: str) -> list[Sample]:
            out, bad = [], []
            for r in records:
                if shards:  # in a shard: its image member was checked when it was read
                    shard = r.image_id[:-len(r.file_name) - 1]  # "<shard>#<key>"
                    # a URL stays a string: Path would fold "https://" into "https:/"
                    out.append(Sample(r, shard if "://" in shard else Path(shard),
                                      category(r.class_name),
                                      tuple(category(n.class_name) for n in r.negatives),
                                      member=r.file_name))
                    continue
                path = index.resolve(r.file_name)
                problem = check_image(path, verify=self.cfg.skip_bad_images)
                if problem:
                    bad.append((r, problem))
                    continue
                out.append(Sample(r, path, category(r.class_name),
                                  tuple(category(n.class_name) for n in r.negatives)))
            if bad and not self.cfg.skip_bad_images:
                shown = "; ".join(f"{r.image_id!r} ({r.file_name}): {why}" for r, why in bad[:5])
                raise FileNotFoundError(
                    f"domain {name} {split}: {len(bad)} of {len(records)} images unusable under "
                    f"{index.root}: {shown}. Fix dataset.root / dataset.domains.{name}.images, "
                    "or set dataset.skip_bad_images=true to skip them (counted and logged).")
            if bad:
                self.skipped[f"{name}/{split}"] = len(bad)
                for r, why in bad[:5]:
                    log.warning("skipping %s %s %r (%s): %s", name, split, r.image_id,
                                r.file_name, why)
            if records and not out:
                raise ValueError(f"domain {name} {split}: no usable images left")
            return out

        splits = DomainSplits(samples(train_records, "train"), samples(val_records, "val"),
                              samples(test_records, "test"))
        log.info("domain %s: %d train, %d val, %d test images", name, len(splits.train),
                 len(splits.val), len(splits.test))
        overlaps = _split_overlaps(splits)
        if overlaps:
            self.overlaps[name] = {k: len(v) for k, v in overlaps.items()}
            log.warning("domain %s: splits share images or ids (evaluation may be optimistic): %s",
                        name, "; ".join(f"{k}: {len(v)} (e.g. {', '.join(sorted(v)[:3])})"
                                        for k, v in overlaps.items()))
        return splits

    def _records(self, root: Path, name: str, dom: DomainConfig, split: str) -> list[ImageRecord]:
        fmt, cfg = CaptionFormat(dom.format), self.cfg
        if fmt == CaptionFormat.webdataset:
            records, missing = read_shard_records(
                getattr(dom, split), caption_key=cfg.caption_key, class_key=cfg.class_key,
                domain=name, skip_missing_images=cfg.skip_bad_images)
            if missing:
                self.skipped[f"{name}/{split}"] = len(missing)
                log.warning("skipping %d %s %s samples without an image, e.g. %s", len(missing),
                            name, split, ", ".join(missing[:5]))
            if not records:
                raise ValueError(f"{getattr(dom, split)}: the {split} split of domain {name} "
                                 "has no usable samples")
            return records
        path = caption_file(self.cfg, name, dom, split)
        if fmt == CaptionFormat.fdrd:
            records, self.reports[f"{name}/{split}"] = load_fdrd_json(path, domain=name)
        elif fmt == CaptionFormat.karpathy:
            records = load_karpathy_json(path, split)
        else:
            records = load_table(path, fmt.value, img_key=cfg.img_key,
                                 caption_key=cfg.caption_key, class_key=cfg.class_key,
                                 separator=cfg.separator, domain=name)
        if not records:
            raise ValueError(f"{path}: the {split} split of domain {name} is empty")
        return records

    def summary(self) -> dict:
        """Image counts, skipped images and data reports, for results.json."""
        return {
            "images": {d: {"train": len(s.train), "val": len(s.val), "test": len(s.test)}
                       for d, s in self.domains.items()},
            "skipped_images": dict(self.skipped),
            "split_overlaps": dict(self.overlaps),
            "reports": {k: _jsonable(dataclasses.asdict(r) if dataclasses.is_dataclass(r) else r)
                        for k, r in self.reports.items()},
        }

    @staticmethod
    def _meta_categories(root: Path, dom: DomainConfig) -> dict[str, str]:
        if not dom.meta_categories:
            return {}
        path = root / dom.meta_categories
        try:
            meta = json.loads(path.read_text())
        except (OSError, ValueError) as e:
            raise ValueError(f"{path}: cannot read meta-categories ({e})") from e
        if not isinstance(meta, dict) or not all(isinstance(v, str) for v in meta.values()):
            raise ValueError(f"{path}: expected a JSON object {{class: meta-category}}")
        return meta

    # -- loaders -------------------------------------------------------------------------
    def train_dataloader(self) -> DataLoader:
        samples = [s for d in self.cfg.train_domains for s in self.domains[d].train]
        pairs = TrainPairs(samples, self.train_transform, self.tokenizer, self.cfg.negatives.k,
                           seed=self.seed)
        batch_size = self.batch_size
        world = self.trainer.world_size if self.trainer is not None else 1
        if len(pairs) < batch_size * world:  # few-shot on few classes: smaller batches (Dassl)
            batch_size = max(1, len(pairs) // world)
            log.warning("dataset %s: %d training images, fewer than data.batch_size=%d x %d "
                        "ranks: batches of %d", self.cfg.name, len(pairs), self.batch_size,
                        world, batch_size)
        if _streamed(samples):  # WebDataset shards
            epoch = self.trainer.current_epoch if self.trainer is not None else 0
            stream = ShardPairs(samples, pairs, batch_size=batch_size,
                                num_workers=self.num_workers, seed=self.seed, start_epoch=epoch)
            return DataLoader(stream, batch_size=batch_size, collate_fn=collate_pairs,
                              num_workers=self.num_workers,
                              persistent_workers=self.num_workers > 0,
                              worker_init_fn=self._worker_init())
        # the order is a function of (seed, epoch): a resumed run sees the same batches
        return DataLoader(pairs, batch_size=batch_size, collate_fn=collate_pairs,
                          sampler=EpochShuffle(len(pairs), self.seed, self._resume_at()),
                          drop_last=True, num_workers=self.num_workers,
                          persistent_workers=self.num_workers > 0,
                          worker_init_fn=self._worker_init())

    def val_domains(self) -> list[str]:
        return list(self.cfg.train_domains)

    def train_class_names(self) -> list[str]:
        """The fine classes of the training split, sorted (empty for caption-only data)."""
        return sorted({s.record.class_name for d in self.domains.values() for s in d.train
                       if s.record.class_name})

    def test_domains(self) -> list[str]:
        if self.cfg.base_to_novel:
            return [f"{d}/{part}" for d in self.cfg.test_domains for part in ("base", "novel")]
        return list(self.cfg.test_domains)

    def val_dataloader(self) -> list[DataLoader]:
        return [self._gallery(d, self.domains[d].val) for d in self.val_domains()]

    def test_dataloader(self) -> list[DataLoader]:
        return [self._gallery(d, self.domains[d].test) for d in self.test_domains()]

    def _gallery(self, name: str, samples: list[Sample]) -> DataLoader:
        gallery = Gallery(samples, self.eval_transform, self.tokenizer, name)
        if _streamed(samples):  # WebDataset shards
            return DataLoader(ShardGallery(samples, gallery, self.eval_batch_size),
                              batch_size=self.eval_batch_size,
                              num_workers=self.num_workers, collate_fn=collate_gallery,
                              worker_init_fn=self._worker_init())
        return DataLoader(gallery, batch_size=self.eval_batch_size, shuffle=False,
                          num_workers=self.num_workers, collate_fn=collate_gallery,
                          worker_init_fn=self._worker_init())

    def _worker_init(self) -> Optional[Callable[[int], None]]:
        if not self.num_workers:
            return None
        rank = self.trainer.global_rank if self.trainer is not None else 0
        return functools.partial(_init_worker, rank=rank)

    # -- resuming ------------------------------------------------------------------------
    def state_dict(self) -> dict[str, int]:
        """Saved in checkpoints: how many batches of its epoch training had done, so that a run
        resumed from a mid-epoch checkpoint (SIGTERM, an exception) continues where it was.
        Lightning resumes such an epoch for its remaining batches only, but from a fresh loader:
        without this, it would train on the epoch's first batches again and skip the rest."""
        if self.trainer is None:
            return {}
        return {"epoch": self.trainer.current_epoch,
                "batches_done": self.trainer.fit_loop.epoch_loop.batch_progress.current.completed}

    def load_state_dict(self, state_dict: dict[str, int]) -> None:
        self._resume = dict(state_dict)

    def _resume_at(self) -> Optional[tuple[int, int]]:
        """(epoch, items already trained on, over all ranks) for `EpochShuffle`."""
        if not self._resume.get("batches_done"):
            return None
        world = self.trainer.world_size if self.trainer is not None else 1
        return self._resume["epoch"], self._resume["batches_done"] * self.batch_size * world


def _streamed(samples: list[Sample]) -> bool:
    """Whether the samples are in WebDataset shards (all of them) or files (none)."""
    kinds = {s.member is not None for s in samples}
    if len(kinds) > 1:
        raise ValueError("WebDataset domains and image-file domains cannot train or be "
                         "evaluated together in one loader; use one kind per run")
    return kinds == {True}


def caption_file(cfg: DatasetConfig, name: str, dom: DomainConfig, split: str) -> Path:
    """The caption file of a domain's split: under `dataset.captions` (or the root), in a
    `<split>/` subfolder or flat, as the FDRD release is laid out in its revisions."""
    file = getattr(dom, split)
    if not file:
        if split == "train":
            raise ValueError(
                f"domain {name}: no train caption file (dataset.domains.{name}.train is null). "
                f"{dom.note + '. ' if dom.note else ''}Use it as a test domain "
                "(dataset.test_domains, e.g. dataset=fdrd_cross) or give your own: "
                f"dataset.domains.{name}.train=<file>")
        raise ValueError(f"domain {name}: dataset.domains.{name}.{split} is not set"
                         + (f" ({dom.note})" if dom.note else ""))
    base = Path(cfg.captions if cfg.captions else cfg.root).expanduser()
    tried = [base / split / file, base / file]
    found = next((p for p in tried if p.is_file()), None)
    if found is None:
        raise FileNotFoundError(f"domain {name}: {split} caption file {file!r} not found: tried "
                                f"{', '.join(str(p) for p in tried)}"
                                + ("" if cfg.captions else
                                   " (dataset.captions sets the caption folder)"))
    return found


def _init_worker(worker_id: int, rank: int) -> None:
    """A loader worker leaves SIGTERM to the main process, where Lightning saves a checkpoint
    and stops at the next batch, then shuts the workers down. Killed by it (SLURM signals every
    process of a job on preemption), workers would make the main process fail wherever it is
    ("DataLoader worker ... killed by signal"). SIGTERM from the parent itself (the loader
    ending a worker that does not stop) still ends it. Then what Lightning installs when there
    is no worker_init_fn: per-worker seeds."""
    if hasattr(signal, "sigwaitinfo"):  # POSIX
        signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGTERM})
        threading.Thread(target=_end_on_parents_sigterm, daemon=True).start()
    if int(os.environ.get("PL_SEED_WORKERS", 0)):
        pl_worker_init_function(worker_id, rank)


def _end_on_parents_sigterm() -> None:
    while True:
        if signal.sigwaitinfo({signal.SIGTERM}).si_pid == os.getppid():
            os._exit(0)


def _split_overlaps(splits: DomainSplits) -> dict[str, set[str]]:
    """Image files and record ids that two splits of a domain share ("train/test images": the
    shared files, ...); only the non-empty ones."""
    parts = {"train": splits.train, "val": splits.val, "test": splits.test}
    out = {}
    for a, b in (("train", "val"), ("train", "test"), ("val", "test")):
        files = {s.location for s in parts[a]} & {s.location for s in parts[b]}
        ids = {s.record.image_id for s in parts[a]} & {s.record.image_id for s in parts[b]}
        for kind, shared in (("images", files), ("ids", ids)):
            if shared:
                out[f"{a}/{b} {kind}"] = shared
    return out


def _jsonable(value: object) -> object:
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    return value if isinstance(value, (str, int, float, bool, type(None))) else str(value)

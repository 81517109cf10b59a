"""WebDataset shards, as open_clip trains from them (`--dataset-type webdataset`): records, and
datasets that stream the images out of the tar files without unpacking them.

A sample is the tar members sharing a key: the image in `jpg` / `jpeg` / `png` / `webp`, the
caption in `txt` (`dataset.caption_key`), and optionally a `json` member whose
`dataset.class_key` field is the class (or a member named by `class_key`, e.g. `cls`).
The `webdataset` package reads the tars; dualprompt adds what a retrieval run needs on top:

- One metadata pass at setup (captions and classes, no image decoding) gives every sample an
  index, so that negatives are generated for the whole catalogue as for FDRD, a seeded fraction
  can be held out for validation, and every rank knows how many samples every other rank has.
- Training splits the shards across DDP ranks (`webdataset.split_by_node`'s rule: shard i goes
  to rank i mod world), in a fixed assignment, so that an epoch sees every sample once. Ranks
  whose shards hold different numbers of samples all stop at the smallest count (DDP needs the
  same number of steps on each rank); what that drops is counted and logged. Within a rank,
  the loader workers take the samples in turn, not whole shards as in open_clip: a worker then
  reads all of its rank's shards (only the bytes, it decodes its own images); in exchange
  workers take whole batches in turn (batch j to worker j mod workers), so the epoch's length
  is known before it starts and at most a batch less one is left out per rank.
- Evaluation reads every shard on every rank (the metric keeps one copy of each id): exact,
  at the cost of evaluating the whole gallery on each rank.
"""
from __future__ import annotations

import io
import logging
import random
from pathlib import Path
from typing import Any, Callable, Iterator, Optional, Sequence

import torch
from torch import Tensor
from torch.utils.data import IterableDataset, get_worker_info

from .datasets import Gallery, ImageError, Sample, TrainPairs, load_image
from .records import ImageRecord, parse_json_text

log = logging.getLogger(__name__)

IMAGE_EXTENSIONS = ("jpg", "jpeg", "png", "webp")
SHUFFLE_BUFFER = 1000  # samples: a worker's stream is shuffled within this window


def _wds():
    try:
        import webdataset
    except ImportError as e:  # an extra of the training stack
        raise ImportError("reading WebDataset shards needs the webdataset package: "
                          "pip install 'dualprompt[train]'") from e
    return webdataset


def shard_urls(spec: str) -> list[str]:
    """open_clip's shard spec: `::`-separated parts, each brace-expanded
    (`data/{00000..00099}.tar`). Local files must exist; other URLs are left to webdataset."""
    urls = _wds().shardlists.expand_urls(spec)
    if not urls:
        raise ValueError(f"{spec!r}: names no shards")
    missing = [u for u in urls if "://" not in u and not Path(u).expanduser().is_file()]
    if missing:
        raise FileNotFoundError(f"{spec!r}: {len(missing)} of {len(urls)} shards not found, "
                                f"e.g. {', '.join(missing[:3])}")
    return [str(Path(u).expanduser()) if "://" not in u else u for u in urls]


def _samples(urls: Sequence[str]) -> Iterator[dict[str, Any]]:
    """The raw samples of `urls` in order ({"__key__", "__url__", ext: bytes}), one in memory
    at a time; a damaged tar names its shard."""
    wds = _wds()
    pipeline = wds.DataPipeline(wds.SimpleShardList(list(urls)), wds.tarfile_to_samples())
    try:
        yield from pipeline
    except Exception as e:  # tarfile, gzip and I/O errors, re-raised by webdataset
        raise ValueError(f"cannot read WebDataset shard ({type(e).__name__}: {e}); shards: "
                         f"{', '.join(urls[:3])}{' ...' if len(urls) > 3 else ''}") from e


def image_member(sample: dict[str, Any]) -> Optional[str]:
    return next((ext for ext in IMAGE_EXTENSIONS if ext in sample), None)


def read_shard_records(spec: str, *, caption_key: Optional[str] = None,
                       class_key: Optional[str] = None, domain: str = "",
                       skip_missing_images: bool = False
                       ) -> tuple[list[ImageRecord], list[str]]:
    """The records of the shards in `spec`, in shard order, and the samples without an image
    member (`<shard>#<key>`). A record's id is `<shard path>#<key>`, its file_name the key.

    A sample without a caption, or a class when `class_key` is set, is a ValueError naming the
    shard and key; one without an image is too, unless `skip_missing_images`."""
    caption_key = caption_key or "txt"
    records, missing = [], []
    for s in _samples(shard_urls(spec)):
        where = f"{s['__url__']}#{s['__key__']}"
        if image_member(s) is None:
            if not skip_missing_images:
                raise ValueError(f"{where}: no image member ({'/'.join(IMAGE_EXTENSIONS)}); "
                                 f"members: {sorted(k for k in s if not k.startswith('__'))}")
            missing.append(where)
            continue
        caption = _text(s, caption_key, where)
        label = _class(s, class_key, where) if class_key else None
        records.append(ImageRecord(where, s["__key__"], label, (caption,), domain=domain))
    return records, missing


def _text(s: dict[str, Any], key: str, where: str) -> str:
    if key not in s:
        raise ValueError(f"{where}: no {key!r} member for the caption (dataset.caption_key); "
                         f"members: {sorted(k for k in s if not k.startswith('__'))}")
    try:
        text = s[key].decode("utf-8").strip()
    except UnicodeDecodeError as e:
        raise ValueError(f"{where}: member {key!r} is not UTF-8 text ({e})") from None
    if not text:
        raise ValueError(f"{where}: empty caption in member {key!r}")
    return text


def _class(s: dict[str, Any], key: str, where: str) -> str:
    if key in s:
        return _text(s, key, where)
    if "json" not in s:
        raise ValueError(f"{where}: no {key!r} member and no json member for the class "
                         "(dataset.class_key)")
    meta = parse_json_text(s["json"].decode("utf-8"), f"{where}.json",
                           reject_duplicate_keys=True)
    label = meta.get(key) if isinstance(meta, dict) else None
    if not isinstance(label, str) or not label.strip():
        raise ValueError(f"{where}.json: no class in field {key!r} (dataset.class_key)")
    return label.strip()


def decode(data: bytes, transform: Callable, where: str) -> Tensor:
    try:
        return load_image(io.BytesIO(data), transform)  # type: ignore[arg-type]
    except ImageError as e:
        raise ImageError(f"{where}: cannot read image ({e.__cause__})") from e


def _rank_and_world() -> tuple[int, int]:
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return torch.distributed.get_rank(), torch.distributed.get_world_size()
    return 0, 1


def _worker() -> tuple[int, int]:
    info = get_worker_info()
    return (info.id, info.num_workers) if info is not None else (0, 1)


class _ShardStream(IterableDataset):
    """The samples of `samples` (each with a shard `path` and a `member` key) as a stream of
    (index, image bytes, where), this process's share of them."""

    def __init__(self, samples: Sequence[Sample]) -> None:
        self.samples = list(samples)
        self.index = {(str(s.path), s.member): i for i, s in enumerate(self.samples)}
        self.shards = list(dict.fromkeys(str(s.path) for s in self.samples))

    def _read(self, shards: Sequence[str]) -> Iterator[tuple[int, bytes, str]]:
        for raw in _samples(shards):
            i = self.index.get((raw["__url__"], raw["__key__"]))
            if i is not None:
                where = f"{raw['__url__']}#{raw['__key__']}"
                ext = image_member(raw)
                if ext is None:  # the metadata pass saw one: the shard changed since
                    raise ImageError(f"{where}: no image member")
                yield i, raw[ext], where


class ShardPairs(_ShardStream):
    """`TrainPairs` items streamed from shards: this rank's shards, this worker's turn.

    The shard order within a rank and the sample order (a shuffle buffer) change with the epoch,
    seeded; the epoch counts this dataset's iterations from `start_epoch` (Lightning does not
    tell an iterable dataset the epoch). Workers take whole batches in turn, so the loader's
    length is exact. A run resumed from a mid-epoch checkpoint restarts that epoch's
    stream."""

    def __init__(self, samples: Sequence[Sample], pairs: TrainPairs, *, batch_size: int,
                 num_workers: int, seed: int = 0, start_epoch: int = 0,
                 rank_and_world: Optional[tuple[int, int]] = None) -> None:
        super().__init__(samples)
        self.pairs, self.batch_size, self.seed = pairs, batch_size, seed
        self.num_workers, self.epoch = max(1, num_workers), start_epoch
        self.rank, self.world = rank_and_world or _rank_and_world()
        if len(self.shards) < self.world:
            raise ValueError(f"{len(self.shards)} training shards for {self.world} ranks: each "
                             "rank needs at least one; write more, smaller shards")
        counts = {u: 0 for u in self.shards}
        for s in self.samples:
            counts[str(s.path)] += 1
        per_rank = [sum(counts[u] for u in self.shards[r::self.world]) for r in range(self.world)]
        # every rank stops at the smallest count, cut to whole batches; batch j of a rank's
        # stream goes to worker j mod num_workers, so at most batch_size - 1 are left out
        self.limit = min(per_rank) // batch_size * batch_size
        if self.limit == 0:
            raise ValueError(f"WebDataset training: {min(per_rank)} samples on the smallest of "
                             f"{self.world} ranks, less than one batch of {batch_size}; lower "
                             "data.batch_size or spread the samples over more shards")
        dropped = sum(per_rank) - self.world * self.limit
        if dropped and self.rank == 0:
            log.warning("WebDataset training: %d of %d samples per epoch left out to give %d "
                        "ranks whole, equal batches (samples per rank: %s)", dropped,
                        sum(per_rank), self.world, per_rank)

    def __len__(self) -> int:
        return self.limit

    def __iter__(self) -> Iterator[dict[str, Tensor]]:
        epoch, self.epoch = self.epoch, self.epoch + 1
        worker, num_workers = _worker()
        if num_workers != self.num_workers:
            raise RuntimeError(f"built for {self.num_workers} loader workers, run by "
                               f"{num_workers}")
        shards = self.shards[self.rank::self.world]
        random.Random(f"{self.seed}:{epoch}:{self.rank}").shuffle(shards)
        mine = (item for pos, item in enumerate(self._read(shards))
                if pos < self.limit and pos // self.batch_size % num_workers == worker)
        rng = random.Random(f"{self.seed}:{epoch}:{self.rank}:{worker}")
        stream = _wds().shuffle(SHUFFLE_BUFFER, initial=SHUFFLE_BUFFER, rng=rng)(mine)
        for i, data, where in stream:
            yield self.pairs.item(i, epoch, decode(data, self.pairs.transform, where))


class ShardGallery(_ShardStream):
    """`Gallery` items streamed from shards: every rank reads them all (see the module doc);
    workers take whole batches in turn."""

    def __init__(self, samples: Sequence[Sample], gallery: Gallery, batch_size: int) -> None:
        super().__init__(samples)
        self.gallery, self.batch_size = gallery, batch_size

    def __len__(self) -> int:
        """Whole batches, the last one possibly short: workers take batches in turn, so the
        loader's batch count (this / batch_size, rounded up) is the true one."""
        return len(self.samples)

    def __iter__(self) -> Iterator[dict[str, Tensor]]:
        worker, num_workers = _worker()
        for pos, (i, data, where) in enumerate(self._read(self.shards)):
            if pos // self.batch_size % num_workers == worker:
                yield self.gallery.item(i, decode(data, self.gallery.transform, where))

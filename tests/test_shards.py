"""`dataset=custom` from WebDataset shards (written by webdataset's own TarWriter): the records
match the CSV's; a 2-process gloo group over 4 shards sees every training sample once per epoch,
with loader workers; a sample without a caption names its shard and key; the data check counts
a sample without an image."""
from __future__ import annotations

import io
import json
import os
import socket
import tarfile
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch.utils.data import DataLoader

from dualprompt.data.custom import load_table
from dualprompt.data.datasets import Sample, TrainPairs, collate_pairs
from dualprompt.data.shards import ShardPairs, read_shard_records, shard_urls
from tests.test_custom_data import _run, catalogue  # noqa: F401  (module fixture)
from tests.test_fdrd_release import release  # noqa: F401  (module fixture)


def test_shards_hold_the_records_of_the_csv(catalogue):  # noqa: F811
    shards, missing = read_shard_records(catalogue["train_wds"], class_key="label")
    csv = load_table(catalogue["train_csv"], "csv", class_key="label")
    assert missing == [] and len(shard_urls(catalogue["train_wds"])) == 4
    assert [(r.class_name, r.captions) for r in shards] == [(r.class_name, r.captions)
                                                            for r in csv]
    assert shards[0].image_id.endswith("00000.tar#000000")


def _samples(spec: str) -> list[Sample]:
    records, _ = read_shard_records(spec)
    return [Sample(r, Path(r.image_id.rsplit("#", 1)[0]), member=r.file_name) for r in records]


def _no_transform(image) -> torch.Tensor:
    return torch.zeros(1)


def _no_tokens(texts: list[str]) -> torch.Tensor:
    return torch.zeros(len(texts), 3, dtype=torch.long)


def _seen(rank: int, world: int, port: int, spec: str, workers: int, out) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world)
    samples = _samples(spec)
    pairs = TrainPairs(samples, _no_transform, _no_tokens, num_negatives=0)
    stream = ShardPairs(samples, pairs, batch_size=2, num_workers=workers, seed=0)
    loader = DataLoader(stream, batch_size=2, collate_fn=collate_pairs, num_workers=workers,
                        persistent_workers=workers > 0)
    epochs = []
    for _ in range(2):
        mine = [i for batch in loader for i in batch.index.tolist()]
        assert len(mine) == len(stream) == len(loader) * 2
        everyone = [None] * world
        dist.all_gather_object(everyone, mine)
        epochs.append(everyone)
    dist.destroy_process_group()
    out.put((rank, epochs))


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.parametrize("workers", [2, pytest.param(0, marks=pytest.mark.slow)])
def test_two_ranks_see_every_training_sample_once_per_epoch(catalogue, workers):  # noqa: F811
    ctx = mp.get_context("spawn")
    out = ctx.Queue()
    port = _free_port()
    procs = [ctx.Process(target=_seen, args=(r, 2, port, catalogue["train_wds"], workers, out))
             for r in range(2)]
    for p in procs:
        p.start()
    results = dict(out.get(timeout=600) for _ in procs)  # spawn + imports on a busy machine
    for p in procs:
        p.join(timeout=60)
        assert p.exitcode == 0
    n = len(_samples(catalogue["train_wds"]))
    orders = []
    for everyone in results[0]:
        rank0, rank1 = everyone
        assert sorted(rank0 + rank1) == list(range(n))  # each sample once, on one rank
        orders.append(rank0)
    assert orders[0] != orders[1]  # a new order each epoch


def _tar(path, members: dict[str, bytes]) -> None:
    with tarfile.open(path, "w") as tar:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))


def test_a_sample_without_a_caption_names_its_shard_and_key(tmp_path):
    _tar(tmp_path / "a.tar", {"k1.png": b"x", "k1.txt": b"a cat", "k2.png": b"y"})
    with pytest.raises(ValueError, match=r"a.tar#k2: no 'txt' member for the caption"):
        read_shard_records(str(tmp_path / "a.tar"))


def test_a_sample_without_an_image_is_an_error_or_a_counted_skip(tmp_path):
    _tar(tmp_path / "a.tar", {"k1.png": b"x", "k1.txt": b"a cat", "k2.txt": b"a dog"})
    with pytest.raises(ValueError, match=r"a.tar#k2: no image member"):
        read_shard_records(str(tmp_path / "a.tar"))
    records, missing = read_shard_records(str(tmp_path / "a.tar"), skip_missing_images=True)
    assert [r.file_name for r in records] == ["k1"] and missing[0].endswith("a.tar#k2")


def test_a_missing_shard_is_named(tmp_path):
    _tar(tmp_path / "00000.tar", {"k.png": b"x", "k.txt": b"t"})
    with pytest.raises(FileNotFoundError, match=r"1 of 2 shards not found.*00001.tar"):
        shard_urls(str(tmp_path / "{00000..00001}.tar"))


@pytest.mark.slow  # a 2-process DDP training run
def test_ddp_trains_from_shards(release, catalogue):  # noqa: F811
    proc, run_dir = _run(release, catalogue, "wds", "dataset.class_key=label",
                         "trainer.accelerator=cpu", "trainer.devices=2", "trainer.strategy=ddp",
                         "trainer.precision=32-true", "data.batch_size=2")
    results = json.loads((run_dir / "results.json").read_text())
    assert results["data"]["images"]["custom"] == {"train": 14, "val": 2, "test": 8}
    # 14 training samples (2 held out for validation), 7 per rank: one per rank cannot make a
    # whole batch of 2, and is said
    assert "2 of 14 samples per epoch left out" in proc.stdout + proc.stderr


def test_a_streamed_gallery_with_workers_yields_every_image_in_its_stated_batches(catalogue):  # noqa: F811
    from dualprompt.data.datasets import Gallery, collate_gallery
    from dualprompt.data.shards import ShardGallery
    samples = _samples(catalogue["test_wds"])
    gallery = Gallery(samples, _no_transform, _no_tokens, "test")
    loader = DataLoader(ShardGallery(samples, gallery, batch_size=3), batch_size=3,
                        num_workers=2, collate_fn=collate_gallery)
    batches = list(loader)
    assert len(batches) == len(loader) == 3  # 8 images: 3 + 3 + 2, the workers in turn
    assert sorted(i for b in batches for i in b.image_ids.tolist()) == list(range(8))

"""Bad data never crashes deep in a DataLoader: a clear error naming the file and the record,
or, with `dataset.skip_bad_images=true`, a counted and logged skip."""
from __future__ import annotations

import gc
import json
import logging
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from dualprompt import DualPromptCLIP
from dualprompt.data.datasets import check_image, load_image
from dualprompt.training.datamodule import RetrievalDataModule
from dualprompt.training.schema import DatasetConfig, DomainConfig
from tests.conftest import PROMPTS, make_tiny_clip
from tests.toy_data import write_toy_fdrd

EOT = 49407  # open_clip's end-of-text token id
BAD = "alpha_train_000"  # the record whose image the tests break


def transform(img: Image.Image) -> torch.Tensor:
    return torch.from_numpy(np.array(img.resize((32, 32)))).permute(2, 0, 1).float() / 255


def data_module(root: Path, tokenizer, skip: bool = False, workers: int = 0,
                **domain: str) -> RetrievalDataModule:
    files = {"train": "toy_a/train.json", "test": "toy_a/test.json", "images": "toy_a/images"}
    cfg = DatasetConfig(name="toy", root=str(root),
                        domains={"toy_a": DomainConfig(**{**files, **domain})},
                        train_domains=["toy_a"], test_domains=["toy_a"], val_fraction=0.25,
                        skip_bad_images=skip)
    return RetrievalDataModule(cfg, tokenizer=tokenizer, train_transform=transform,
                               eval_transform=transform, batch_size=2, eval_batch_size=4,
                               num_workers=workers)


def load_everything(dm: RetrievalDataModule) -> int:
    """Iterate every loader; the number of images seen."""
    loaders = [dm.train_dataloader(), *dm.val_dataloader(), *dm.test_dataloader()]
    return sum(len(batch.image) for loader in loaders for batch in loader)


@pytest.fixture
def toy(tmp_path):
    """12 train (9 + 3 held out for val) and 8 test images of 4 classes."""
    return write_toy_fdrd(tmp_path, domains=("toy_a",), per_class={"train": 3, "test": 2})


def png_header_only(width: int, height: int) -> bytes:
    """A valid PNG header announcing width x height (1-bit grey), with a few bytes of data."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return (struct.pack(">I", len(data)) + kind + data
                + struct.pack(">I", zlib.crc32(kind + data)))
    ihdr = struct.pack(">IIBBBBB", width, height, 1, 0, 0, 0, 0)
    idat = zlib.compress(b"\0" * (1 + width // 8) * 4)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", idat) + chunk(b"IEND", b"")


def jpeg_bytes() -> bytes:
    import io
    rng = np.random.default_rng(0)
    buf = io.BytesIO()
    Image.fromarray((rng.random((64, 64, 3)) * 255).astype(np.uint8)).save(buf, "JPEG")
    return buf.getvalue()


# content breakages: the file exists and is not empty, so only decoding finds them
CORRUPT = {
    "truncated_jpeg": lambda png: jpeg_bytes()[: len(jpeg_bytes()) * 2 // 3],
    "truncated_png": lambda png: png[: len(png) // 2],
    "garbage": lambda png: bytes(range(256)) * 8,
    "text_file": lambda png: b"this is not an image\n",
    # 10000 x 10000 pixels in 1 KB: PIL only warns (the limit is 89 M, it raises over 179 M)
    "decompression_bomb": lambda png: png_header_only(10_000, 10_000),
}


def break_image(root: Path, kind: str) -> Path:
    path = root / "toy_a" / "images" / f"{BAD}.png"
    if kind == "missing":
        path.unlink()
    elif kind == "zero_bytes":
        path.write_bytes(b"")
    else:
        path.write_bytes(CORRUPT[kind](path.read_bytes()))
    return path


@pytest.mark.parametrize("kind", ["missing", "zero_bytes"])
def test_missing_and_empty_images_stop_setup_naming_file_and_record(toy, tokenizer, kind):
    break_image(toy, kind)
    with pytest.raises(FileNotFoundError) as err:
        data_module(toy, tokenizer).setup()
    message = str(err.value)
    assert f"'{BAD}' ({BAD}.png)" in message and "skip_bad_images=true" in message
    assert ("not found" if kind == "missing" else "empty file (0 bytes)") in message


@pytest.mark.parametrize("kind", sorted(CORRUPT))
def test_corrupt_images_fail_at_load_naming_file_and_record(toy, tokenizer, kind):
    path = break_image(toy, kind)
    dm = data_module(toy, tokenizer)
    dm.setup()  # only a stat per image: decoding everything is what skip_bad_images does
    with pytest.raises(RuntimeError) as err:
        load_everything(dm)
    message = str(err.value)
    assert str(path) in message and f"record {BAD!r} of domain toy_a" in message
    assert "dataset.skip_bad_images=true" in message
    if kind == "decompression_bomb":
        assert "10000x10000 pixels is over PIL.Image.MAX_IMAGE_PIXELS" in message


@pytest.mark.parametrize("kind", ["missing", "zero_bytes", *sorted(CORRUPT)])
def test_bad_images_are_counted_logged_and_skipped(toy, tokenizer, kind, caplog):
    break_image(toy, kind)
    dm = data_module(toy, tokenizer, skip=True)
    with caplog.at_level(logging.WARNING):
        dm.setup()
    summary = dm.summary()
    assert sum(summary["skipped_images"].values()) == 1
    images = summary["images"]["toy_a"]
    assert images["train"] + images["val"] == 11 and images["test"] == 8
    assert f"{BAD!r} ({BAD}.png)" in caplog.text
    # what is left loads (train batches of 2, the last one dropped when incomplete)
    assert load_everything(dm) == images["train"] // 2 * 2 + images["val"] + images["test"]


def test_errors_inside_loader_workers_name_file_and_record(toy, tokenizer, monkeypatch):
    import multiprocessing
    import time

    # a worker that raised does not take its stop sentinel: torch waits this long, then
    # terminates it (SIGTERM from its parent, which the worker obeys, see _init_worker)
    monkeypatch.setattr(torch.utils.data._utils, "MP_STATUS_CHECK_INTERVAL", 0.2)
    path = toy / "toy_a" / "images" / "alpha_test_000.png"
    path.write_bytes(path.read_bytes()[:100])  # truncated
    dm = data_module(toy, tokenizer, workers=1)
    dm.setup()
    with pytest.raises(RuntimeError) as err:
        for loader in dm.test_dataloader():
            list(loader)
    message = str(err.value)
    assert str(path) in message and "record 'alpha_test_000'" in message
    assert "DataLoader worker" in message  # raised in the worker, re-raised here
    del err  # its traceback holds the loader's iterator: freeing it stops the worker
    gc.collect()
    deadline = time.time() + 10
    while multiprocessing.active_children() and time.time() < deadline:
        time.sleep(0.05)
    assert not multiprocessing.active_children()


def test_truncated_jpeg_passes_verify_but_not_the_setup_check(tmp_path):
    path = tmp_path / "truncated.jpg"
    path.write_bytes(CORRUPT["truncated_jpeg"](b""))
    with Image.open(path) as img:
        img.verify()  # PIL's verify() alone does not see it
    assert "truncated" in check_image(path, verify=True)
    assert check_image(path, verify=False) is None  # the default only stats the file


def sixteen_bit() -> Image.Image:
    return Image.fromarray((np.arange(32 * 32).reshape(32, 32) * 64).astype(np.uint16))


@pytest.mark.parametrize("make", [
    lambda: Image.new("L", (32, 32), 128),
    lambda: Image.new("RGBA", (32, 32), (200, 10, 10, 0)),
    lambda: Image.new("RGB", (32, 32), (10, 200, 10)).convert("P"),
    lambda: Image.new("1", (32, 32), 1),
    lambda: Image.new("LA", (32, 32), (100, 50)),
    sixteen_bit,
], ids=["L", "RGBA", "P", "1", "LA", "I;16"])
def test_image_modes_load_as_rgb(tmp_path, make):
    path = tmp_path / "image.png"
    make().save(path)
    with Image.open(path) as img:
        mode = img.mode
    image = load_image(path, transform)
    assert image.shape == (3, 32, 32)
    if mode.startswith("I"):  # 16-bit grey is scaled to 8 bits, not clipped to white
        want = torch.from_numpy((np.asarray(sixteen_bit()) >> 8).astype(np.float32)) / 255
        torch.testing.assert_close(image[0], want, atol=1 / 255, rtol=0)


def record(positive: object = "This is a photo of alpha.A red square.", **fields) -> dict:
    return {"file_name": "alpha_train_000.png", "class_name": "alpha", "positive": positive,
            "negative": [], **fields}


@pytest.mark.parametrize("content, expected", [
    ([record()], "expected a JSON object keyed by image id, got list"),
    ("a string", "expected a JSON object keyed by image id, got str"),
    ({}, "contains no records"),
    ({"r1": record(), "r2": {"file_name": "x.png"}},
     "'r2': missing field(s) 'positive', 'negative'"),
    ({"r1": record(positive="   ")}, "'r1': positive must be a non-empty string"),
    ({"r1": record(positive=["a list"])}, "'r1': positive must be a non-empty string"),
    ({"r1": record(negative=[None])}, "'r1': negative[0] must be a non-empty string"),
    ({"r1": record(file_name="../../etc/passwd")},
     "'r1': file_name: file name must not contain '..'"),
    ({"r1": record(file_name="/etc/passwd")}, "'r1': file_name: file name must be relative"),
], ids=["list", "string", "empty", "missing_fields", "blank_caption", "non_string_caption",
        "null_negative", "dotdot_path", "absolute_path"])
def test_bad_caption_files_name_file_and_record(toy, tokenizer, content, expected):
    path = toy / "toy_a" / "train.json"
    path.write_text(json.dumps(content))
    with pytest.raises(ValueError) as err:
        data_module(toy, tokenizer).setup()
    assert str(path) in str(err.value) and expected in str(err.value)


def rewrite(path: Path, change) -> None:
    records = json.loads(path.read_text())
    path.write_text(json.dumps({key: change(key, value) for key, value in records.items()}))


STRANGE = ["café 漢字 😀 שלום", "nul\x00 escape\x1b[31m del\x7f", "zero\u200bwidth\ufeff",
           "e\u0301\u0301\u0301", "\ud800 lone surrogate", "\x00\x01\x02"]


def test_unicode_and_control_characters_load_and_encode(toy, tokenizer, tiny_config_file):
    def strange(key, value):
        i = int(key[-3:]) % len(STRANGE)
        return {**value, "positive": value["positive"] + STRANGE[i]}

    rewrite(toy / "toy_a" / "train.json", strange)
    dm = data_module(toy, tokenizer)
    dm.setup()
    batch = next(iter(dm.train_dataloader()))
    assert (batch.tokens.argmax(-1) > 0).all()  # every caption ends in an EOT
    model = DualPromptCLIP(make_tiny_clip(), PROMPTS, tokenizer=tokenizer)
    for caption in STRANGE:
        features = model.encode_text(tokenizer([caption]))
        assert torch.isfinite(features).all(), repr(caption)


def test_captions_beyond_the_context_window_keep_their_end_token(toy, tokenizer,
                                                                  tiny_config_file):
    rewrite(toy / "toy_a" / "train.json",
            lambda key, value: {**value, "positive": value["positive"] + " very" * 5000})
    dm = data_module(toy, tokenizer)
    dm.setup()
    batch = next(iter(dm.train_dataloader()))
    assert batch.tokens.shape[-1] == 77 and (batch.tokens[:, -1] == EOT).all()
    model = DualPromptCLIP(make_tiny_clip(), PROMPTS, tokenizer=tokenizer)
    assert torch.isfinite(model.encode_text(batch.tokens)).all()


def test_a_single_class_domain_is_counted_and_training_data_still_loads(toy, tokenizer):
    rewrite(toy / "toy_a" / "train.json", lambda key, value: {
        **value, "class_name": "alpha",
        "positive": value["positive"].replace(value["class_name"], "alpha")})
    dm = data_module(toy, tokenizer)
    dm.setup()
    report = dm.summary()["reports"]["toy_a/negatives"]
    assert report["records_single_class"] == report["n_records"] == 9  # no class swap possible
    assert report["class_swaps"] == 0
    batch = next(iter(dm.train_dataloader()))
    assert batch.negative_mask.any()  # attribute swaps (same class, other description)


def test_split_overlaps_are_warned_about_and_counted(toy, tokenizer, caplog):
    train = json.loads((toy / "toy_a" / "train.json").read_text())
    test_path = toy / "toy_a" / "test.json"
    test = json.loads(test_path.read_text())
    test["beta_train_001"] = train["beta_train_001"]  # the same id and image in train and test
    test["copy_of_gamma"] = train["gamma_train_002"]  # another id, the same image file
    test_path.write_text(json.dumps(test))
    dm = data_module(toy, tokenizer)
    with caplog.at_level(logging.WARNING):
        dm.setup()
    overlaps = dm.summary()["split_overlaps"]["toy_a"]
    shared_images = sum(n for k, n in overlaps.items() if k.endswith("/test images"))
    shared_ids = sum(n for k, n in overlaps.items() if k.endswith("/test ids"))
    assert (shared_images, shared_ids) == (2, 1), overlaps
    assert "splits share images or ids" in caplog.text and "beta_train_001" in caplog.text
    assert load_everything(dm) > 0


class _Payload:
    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):  # unpickling it would create the marker file
        return (open, (str(self.marker), "w"))


def test_a_checkpoint_with_pickled_code_is_refused_naming_it(tmp_path):
    import pickle

    from dualprompt.training.factory import SafeCheckpointIO

    path, marker = tmp_path / "evil.ckpt", tmp_path / "PAYLOAD_RAN"
    torch.save({"state_dict": {}, "x": _Payload(marker)}, path)
    with pytest.raises(pickle.UnpicklingError) as err:
        SafeCheckpointIO().load_checkpoint(path, weights_only=True)
    assert f"{path}: refused" in str(err.value) and "Unsupported global" in str(err.value)
    assert not marker.exists()

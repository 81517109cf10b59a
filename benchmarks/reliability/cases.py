"""The bad inputs, untrusted files and interrupted writes of the reliability report, one
registered `Case` each (see harness.py)."""
from __future__ import annotations

import json
import os
import pickle
import struct
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from PIL import Image
from safetensors.torch import load_file, save_file

import dualprompt.prompt_file as prompt_file_module
from dualprompt import DualPromptCLIP, PromptFileError, load_prompts
from dualprompt.data.datasets import check_image, load_image
from dualprompt.training.results import write_json
from harness import (BAD, PROMPTS, Case, CASES, Outcome, attempt, capture_log, case,
                     corrupt_middle, data_module, jpeg, load_all, pil_bytes, png_header,
                     tiny_clip, to_tensor, tokenizer, write_dataset)


# -- images ------------------------------------------------------------------------------
IMAGE_BREAKAGES: dict[str, Callable[[bytes], bytes]] = {
    "zero-byte file": lambda png: b"",
    "truncated JPEG (2/3 of the file)": lambda png: jpeg()[: len(jpeg()) * 2 // 3],
    "truncated PNG (1/2 of the file)": lambda png: png[: len(png) // 2],
    "PNG with 200 random bytes mid-file": corrupt_middle,
    "random bytes named .png": lambda png: bytes(range(256)) * 8,
    "text file named .png": lambda png: b"not an image\n",
    "decompression bomb: 10000x10000 px in 1 KB": lambda png: png_header(10_000, 10_000),
}


def break_image(root: Path, name: str) -> Path:
    path = root / "toy" / "images" / f"{BAD}.png"
    if name == "missing file":
        path.unlink()
    else:
        path.write_bytes(IMAGE_BREAKAGES[name](path.read_bytes()))
    return path


def image_cases() -> None:
    for name in ["missing file", *IMAGE_BREAKAGES]:
        def strict(tmp: Path, name=name) -> Outcome:
            break_image(write_dataset(tmp), name)
            return attempt(lambda: f"loaded {load_all(data_module(tmp))} images")

        def skipping(tmp: Path, name=name) -> Outcome:
            break_image(write_dataset(tmp), name)
            dm = data_module(tmp, skip=True)
            with capture_log() as logged:
                out = attempt(lambda: f"loaded {load_all(dm)} images")
            skipped = sum(dm.skipped.values())
            if out.kind != "loaded" or not skipped:
                return out
            return Outcome("skipped", f"{skipped} skipped, summary {dm.summary()['skipped_images']}"
                                      f"; log: {logged.getvalue().strip()[:300]}")

        CASES.append(Case("image", f"{name}", "error", (BAD, "skip_bad_images"), strict))
        CASES.append(Case("image", f"{name}, skip_bad_images=true", "skipped",
                          (BAD, "1 skipped"), skipping))


image_cases()


@case("image", "JPEG with 200 random bytes mid-file (a known limit)", "loaded")
def jpeg_noise(tmp: Path) -> Outcome:
    """JPEG has no checksum: damaged entropy-coded data usually still decodes, to wrong
    pixels, and no decoder-based check can tell. Recorded so that the limit is visible."""
    path = tmp / "noisy.jpg"
    path.write_bytes(corrupt_middle(jpeg()))
    problem = check_image(path, verify=True)
    return Outcome("error", problem) if problem else Outcome(
        "loaded", "decodes (wrong pixels), passes the skip_bad_images check: undetectable "
        "without a reference checksum of the file")


def mode_case(label: str, make: Callable[[], bytes], check: Callable[[torch.Tensor], bool]):
    @case("image mode", label, "loaded")
    def run(tmp: Path) -> Outcome:
        path = tmp / "image.img"
        path.write_bytes(make())

        def load() -> str:
            image = load_image(path, to_tensor)
            assert image.shape == (3, 32, 32) and check(image), "wrong pixels"
            return f"RGB tensor {tuple(image.shape)}, mean {image.mean():.3f}"
        return attempt(load, errors=(RuntimeError, AssertionError))


GREY16 = (np.arange(32 * 32).reshape(32, 32) * 64).astype(np.uint16)
mode_case("grayscale (L)", lambda: pil_bytes(Image.new("L", (32, 32), 128)),
          lambda t: abs(t.mean().item() - 128 / 255) < 0.01)
mode_case("RGBA with alpha", lambda: pil_bytes(Image.new("RGBA", (32, 32), (200, 10, 10, 0))),
          lambda t: t[0].mean() > 0.7)
mode_case("palette (P)", lambda: pil_bytes(Image.new("RGB", (32, 32), (10, 200, 10)).convert("P")),
          lambda t: t[1].mean() > 0.7)
mode_case("16-bit grey (I;16), scaled not clipped", lambda: pil_bytes(Image.fromarray(GREY16)),
          lambda t: abs(t.mean().item() - (GREY16 >> 8).mean() / 255) < 0.01)
mode_case("CMYK JPEG", lambda: jpeg(mode="CMYK"), lambda t: t.std() > 0.05)


# -- caption files -------------------------------------------------------------------------
def caption_case(name: str, content: Callable[[dict], object], expect: str = "error",
                 *must_name: str, raw: bool = False):
    @case("caption file", name, expect, "train.json", *must_name)
    def run(tmp: Path) -> Outcome:
        path = write_dataset(tmp) / "toy" / "train.json"
        new = content(json.loads(path.read_text()))
        if raw:
            path.write_bytes(new)
        else:
            path.write_text(json.dumps(new))
        return attempt(lambda: f"{path}: loaded {load_all(data_module(tmp))} images")


def edit(change: Callable[[dict], dict]) -> Callable[[dict], dict]:
    return lambda records: {**records, BAD: change(dict(records[BAD]))}


caption_case("JSON is a list, not an object", lambda r: list(r.values()))
caption_case("invalid JSON", lambda r: b'{"a": [1, 2', raw=True)
caption_case("not UTF-8", lambda r: json.dumps(r).encode("utf-16"), raw=True)
caption_case("duplicate keys", lambda r: (json.dumps(r)[:-1] + ', "beta_train_000": '
                                          + json.dumps(r["beta_train_000"]) + "}").encode(),
             "error", "beta_train_000", raw=True)
caption_case("record missing 'positive'", edit(lambda v: {k: v[k] for k in v if k != "positive"}),
             "error", BAD)
caption_case("empty caption", edit(lambda v: {**v, "positive": " "}), "error", BAD)
caption_case("caption not a string", edit(lambda v: {**v, "positive": 42}), "error", BAD)
caption_case("file_name escapes the image root with ../",
             edit(lambda v: {**v, "file_name": "../../../etc/passwd"}), "error", BAD, "..")
caption_case("file_name is an absolute path", edit(lambda v: {**v, "file_name": "/etc/passwd"}),
             "error", BAD, "absolute")


@case("caption file", "Karpathy file whose 'images' is not a list", "error", "dataset.json")
def karpathy_not_list(tmp: Path) -> Outcome:
    write_dataset(tmp)
    (tmp / "dataset.json").write_text(json.dumps({"images": {"a": 1}}))
    return attempt(lambda: str(load_all(data_module(tmp, format="karpathy", train="dataset.json",
                                                    test="dataset.json"))))


@case("caption file", "meta-categories JSON is a list", "error", "meta.json")
def meta_not_object(tmp: Path) -> Outcome:
    write_dataset(tmp)
    (tmp / "meta.json").write_text("[1, 2]")
    return attempt(lambda: str(load_all(data_module(tmp, meta_categories="meta.json"))))


STRANGE = ["café 漢字 😀 שלום", "nul\x00 esc\x1b[31m del\x7f", "zero\u200bwidth\ufeff",
           "e\u0301\u0301\u0301", "\ud800 lone surrogate", "\x00\x01\x02"]


@case("caption text", "unicode, control characters, lone surrogates", "loaded")
def strange_captions(tmp: Path) -> Outcome:
    path = write_dataset(tmp) / "toy" / "train.json"
    records = json.loads(path.read_text())
    for i, key in enumerate(records):
        records[key]["positive"] += STRANGE[i % len(STRANGE)]
    path.write_text(json.dumps(records))

    def run() -> str:
        n = load_all(data_module(tmp))
        features = DualPromptCLIP(tiny_clip(), PROMPTS).encode_text(tokenizer()(STRANGE))
        assert torch.isfinite(features).all(), "non-finite text features"
        return f"loaded {n} images; {len(STRANGE)} strange captions encode to finite features"
    return attempt(run, errors=(ValueError, AssertionError))


@case("caption text", "caption of 5000 words (context window 77)", "loaded")
def long_caption(tmp: Path) -> Outcome:
    path = write_dataset(tmp) / "toy" / "train.json"
    records = json.loads(path.read_text())
    records[BAD]["positive"] += " very" * 5000
    path.write_text(json.dumps(records))

    def run() -> str:
        dm = data_module(tmp)
        dm.setup()
        pairs = dm.train_dataloader().dataset
        index = next(i for i, s in enumerate(pairs.samples) if s.record.image_id == BAD)
        tokens = pairs[index]["tokens"]
        assert tokens.shape == (77,) and tokens[-1] == 49407, "end-of-text token lost"
        assert torch.isfinite(DualPromptCLIP(tiny_clip(), PROMPTS).encode_text(tokens[None])).all()
        return "truncated to 77 tokens, the last one end-of-text; features finite"
    return attempt(run, errors=(ValueError, AssertionError))


@case("domain", "a domain with a single class", "loaded")
def single_class(tmp: Path) -> Outcome:
    path = write_dataset(tmp) / "toy" / "train.json"
    records = json.loads(path.read_text())
    for v in records.values():
        v["positive"] = v["positive"].replace(v["class_name"], "alpha")
        v["class_name"], v["negative"] = "alpha", []
    path.write_text(json.dumps(records))

    def run() -> str:
        dm = data_module(tmp)
        n = load_all(dm)
        report = dm.summary()["reports"]["toy/negatives"]
        assert report["records_single_class"] == report["n_records"] > 0, "not counted"
        return (f"loaded {n} images; records_single_class={report['records_single_class']} "
                f"(no class swap possible), attribute swaps={report['attribute_swaps']}")
    return attempt(run, errors=(ValueError, AssertionError))


@case("domain", "same id and image in train and test; another id, same file", "loaded",
      "train/test", "beta_train_001")
def overlap(tmp: Path) -> Outcome:
    root = write_dataset(tmp)
    train = json.loads((root / "toy" / "train.json").read_text())
    test = json.loads((root / "toy" / "test.json").read_text())
    test["beta_train_001"] = train["beta_train_001"]
    test["copy_of_gamma"] = train["gamma_train_002"]
    (root / "toy" / "test.json").write_text(json.dumps(test))

    def run() -> str:
        dm = data_module(tmp)
        with capture_log() as logged:
            n = load_all(dm)
        overlaps = dm.summary()["split_overlaps"]
        assert overlaps, "not detected"
        return f"loaded {n} images; split_overlaps={overlaps}; log: {logged.getvalue().strip()}"
    return attempt(run, errors=(ValueError, AssertionError))


# -- untrusted files -----------------------------------------------------------------------
class Payload:
    """Unpickling this creates a marker file: the proof that a load ran code."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (open, (str(self.marker), "w"))


def untrusted(name: str, *must_name: str):
    def register(make: Callable[[Path], Path]):
        @case("untrusted file", name, "error", *must_name)
        def run(tmp: Path) -> Outcome:
            marker = tmp / "PAYLOAD_RAN"
            path = make(tmp)
            out = attempt(lambda: f"loaded {load_prompts(path, tiny_clip())}",
                          errors=(PromptFileError,))
            if marker.exists():
                return Outcome("crash", "the pickled payload ran: " + out.message)
            return out
        return make
    return register


def good_prompt_file(tmp: Path) -> Path:
    return DualPromptCLIP(tiny_clip(), PROMPTS).save_prompts(tmp / "prompts.safetensors")


def retag(path: Path, **metadata: str) -> Path:
    """Rewrite a prompt file with some metadata fields replaced (a tampered file)."""
    from safetensors import safe_open
    with safe_open(str(path), framework="pt") as f:
        old = f.metadata()
    save_file(load_file(str(path)), str(path), metadata={**old, **metadata})
    return path


@untrusted("pickle (.pt) passed as a prompt file", "evil.pt", "not a readable safetensors")
def pickle_prompts(tmp: Path) -> Path:
    torch.save({"attribute.vectors": torch.zeros(2, 64), "x": Payload(tmp / "PAYLOAD_RAN")},
               tmp / "evil.pt")
    return tmp / "evil.pt"


@untrusted("raw pickle named prompts.safetensors", "prompts.safetensors")
def raw_pickle(tmp: Path) -> Path:
    (tmp / "prompts.safetensors").write_bytes(pickle.dumps(Payload(tmp / "PAYLOAD_RAN")))
    return tmp / "prompts.safetensors"


@untrusted("prompt file for another backbone", "another base model", "checksum")
def other_backbone(tmp: Path) -> Path:
    return DualPromptCLIP(tiny_clip(seed=1), PROMPTS).save_prompts(tmp / "prompts.safetensors")


@untrusted("tampered metadata: base fingerprint edited", "another base model")
def tampered_fingerprint(tmp: Path) -> Path:
    path = good_prompt_file(tmp)
    fingerprint = json.loads(load_meta(path)["base_fingerprint"])
    fingerprint["checksum"] = "0" * 16
    return retag(path, base_fingerprint=json.dumps(fingerprint))


@untrusted("tampered metadata: prompt_config not JSON", "invalid prompt file metadata")
def tampered_config(tmp: Path) -> Path:
    return retag(good_prompt_file(tmp), prompt_config="{not json")


@untrusted("tampered metadata: prompt lengths do not fit the tensors", "do not match")
def tampered_lengths(tmp: Path) -> Path:
    path = good_prompt_file(tmp)
    config = json.loads(load_meta(path)["prompt_config"])
    return retag(path, prompt_config=json.dumps({**config, "visual_length": 0}))


@untrusted("tampered metadata: unknown format version", "format version")
def tampered_version(tmp: Path) -> Path:
    return retag(good_prompt_file(tmp), format_version="99")


@untrusted("safetensors header claiming 2^62 bytes", "not a readable safetensors")
def huge_header(tmp: Path) -> Path:
    (tmp / "prompts.safetensors").write_bytes(struct.pack("<Q", 2**62) + b"{}")
    return tmp / "prompts.safetensors"


def load_meta(path: Path) -> dict:
    from safetensors import safe_open
    with safe_open(str(path), framework="pt") as f:
        return f.metadata()


@case("untrusted file", "checkpoint with a pickled object, resumed (weights_only=True)",
      "error", "evil.ckpt: refused", "Unsupported global")
def evil_checkpoint(tmp: Path) -> Outcome:
    from dualprompt.training.factory import build_trainer
    from dualprompt.training.module import PromptRetrievalModule
    from dualprompt.training.schema import TrainerConfig

    dm = data_module(write_dataset(tmp))
    dm.setup()
    marker = tmp / "PAYLOAD_RAN"
    ckpt = tmp / "evil.ckpt"
    torch.save({"state_dict": {}, "epoch": 0, "global_step": 0, "x": Payload(marker)}, ckpt)
    module = PromptRetrievalModule(DualPromptCLIP(tiny_clip(), PROMPTS),
                                   val_domains=dm.val_domains())
    trainer = build_trainer(TrainerConfig(max_epochs=1, accelerator="cpu", devices=1,
                                          enable_progress_bar=False), tmp / "run",
                            monitor=None, logger=False, callbacks=[])
    out = attempt(lambda: str(trainer.fit(module, datamodule=dm, ckpt_path=str(ckpt),
                                          weights_only=True)),
                  errors=(pickle.UnpicklingError,))
    return Outcome("crash", "the payload ran") if marker.exists() else out


# -- interrupted writes --------------------------------------------------------------------
def interrupted(name: str, target: str, write: Callable[[Path], None],
                break_it: Callable[[], Callable[[], None]]):
    """`write` once, then again with `break_it` making it fail midway: the file must be the
    first version, with no temp file left."""
    @case("interrupted write", name, "error", "previous file intact", "no temp file")
    def run(tmp: Path) -> Outcome:
        path = tmp / target
        write(path)
        before = path.read_bytes()
        restore = break_it()
        try:
            out = attempt(lambda: write(path) or "written", errors=(OSError, TypeError))
        finally:
            restore()
        intact = path.read_bytes() == before
        leftovers = sorted(p.name for p in tmp.iterdir() if p.name != target)
        return Outcome(out.kind, f"{out.message}; "
                       + ("previous file intact" if intact else "FILE CHANGED") + "; "
                       + ("no temp file" if not leftovers else f"left {leftovers}"))
    return run


def patch(module, attr: str, replacement) -> Callable[[], Callable[[], None]]:
    def apply() -> Callable[[], None]:
        original = getattr(module, attr)
        setattr(module, attr, replacement)
        return lambda: setattr(module, attr, original)
    return apply


def half_then_fail(obj, target, *args, **kwargs):
    """A `save_file(tensors, filename)` / `torch.save(obj, file)` killed half-way."""
    if hasattr(target, "write"):
        target.write(b"half a file")
    else:
        Path(target).write_bytes(b"half a file")
    raise OSError("killed mid-write (simulated)")


def failing_fsync(fd: int) -> None:
    raise OSError("I/O error (simulated)")


def _prompt_file_write(path: Path) -> None:
    DualPromptCLIP(tiny_clip(), PROMPTS).save_prompts(path)


def _checkpoint_write(path: Path) -> None:
    from dualprompt.training.factory import SafeCheckpointIO
    SafeCheckpointIO().save_checkpoint({"step": torch.tensor(1)}, path)


interrupted("prompt file: save_file fails half-way", "prompts.safetensors", _prompt_file_write,
            patch(prompt_file_module, "save_file", half_then_fail))
interrupted("checkpoint: torch.save fails half-way", "last.ckpt", _checkpoint_write,
            patch(torch, "save", half_then_fail))
interrupted("results.json: fsync fails after the temp file is written", "results.json",
            lambda path: write_json(path, {"test": 1}), patch(os, "fsync", failing_fsync))

"""A data check before the GPU hour: what a run would read, per domain and split.

Records, classes, images found and missing, the caption files' defects, caption lengths against
the text window, duplicate images within a split and images shared across splits. No model and
no image decoding: seconds. `python -m dualprompt.check_data` prints it; every training run logs
it and keeps it in results.json.
"""
from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import Callable

from ..data import load_fdrd_json, load_karpathy_json
from ..data.custom import load_table
from ..data.datasets import check_image
from ..data.images import ImageIndex
from ..data.records import CaptionFormat
from ..data.shards import read_shard_records
from .datamodule import caption_file
from .schema import DatasetConfig

LENGTH_BINS = (16, 32, 48, 64)  # caption tokens (with start and end), then up to the window


def check_dataset(cfg: DatasetConfig, count_tokens: Callable[[str], int], window: int) -> dict:
    """The report, as JSON-able data. count_tokens: a caption's length in tokens with its start
    and end tokens; window: what a caption may fill (context length - text prompt vectors).
    `problems` lists what would stop a run (missing files and images)."""
    report: dict = {"window": window, "domains": {}, "problems": []}
    for name in dict.fromkeys([*cfg.train_domains, *cfg.test_domains]):
        dom = cfg.domains.get(name)
        if dom is None:
            report["problems"].append(f"domain {name} is not defined in dataset.domains")
            continue
        splits = (["train"] + (["val"] if dom.val else [])) if name in cfg.train_domains else []
        splits += ["test"] if name in cfg.test_domains else []
        checked, files = {}, {}
        for split in splits:
            try:
                checked[split], files[split] = _check_split(cfg, name, dom, split, count_tokens,
                                                            window)
            except (ValueError, FileNotFoundError) as e:
                report["problems"].append(str(e))
                continue
            missing = checked[split]["images_missing"]
            if missing:
                report["problems"].append(
                    f"domain {name} {split}: {missing} images missing, e.g. "
                    f"{', '.join(checked[split]['missing_examples'])}")
        shared = {f"{a}/{b}": len(files[a] & files[b])
                  for a, b in (("train", "val"), ("train", "test"), ("val", "test"))
                  if a in files and b in files and files[a] & files[b]}
        report["domains"][name] = {"splits": checked, "images_shared_across_splits": shared}
    return report


def _check_split(cfg: DatasetConfig, name: str, dom, split: str,
                 count_tokens: Callable[[str], int], window: int) -> tuple[dict, set[str]]:
    if CaptionFormat(dom.format) == CaptionFormat.webdataset:
        records, missing = read_shard_records(getattr(dom, split), caption_key=cfg.caption_key,
                                              class_key=cfg.class_key, domain=name,
                                              skip_missing_images=True)
        # a sample without an image is a record too: count it in
        return _summary(getattr(dom, split), len(records) + len(missing), records,
                        [r.image_id for r in records], missing, {}, count_tokens, window)
    path = caption_file(cfg, name, dom, split)
    defects: dict[str, int] = {}
    if CaptionFormat(dom.format) == CaptionFormat.fdrd:
        records, fdrd = load_fdrd_json(path, domain=name)
        defects = {k: d.count for k, d in fdrd.defects().items()}
    elif CaptionFormat(dom.format) == CaptionFormat.karpathy:
        records = load_karpathy_json(path, split)
    else:
        records = load_table(path, CaptionFormat(dom.format).value, img_key=cfg.img_key,
                             caption_key=cfg.caption_key, class_key=cfg.class_key,
                             separator=cfg.separator, domain=name)
    index = ImageIndex(Path(cfg.root).expanduser() / dom.images)
    found, missing = [], []
    for r in records:
        image = index.resolve(r.file_name)
        if check_image(image, verify=False) is None:
            found.append(str(image))
        else:
            missing.append(r.file_name)
    return _summary(str(path), len(records), records, found, missing, defects, count_tokens,
                    window)


def _summary(where: str, n_records: int, records: list, found: list[str], missing: list[str],
             defects: dict[str, int], count_tokens: Callable[[str], int],
             window: int) -> tuple[dict, set[str]]:
    seen = Counter(found)
    lengths = Counter(_bin(count_tokens(c), window) for r in records for c in r.captions)
    return {
        "file": where, "records": n_records,
        "classes": len({r.class_name for r in records if r.class_name}),
        "images_found": len(found), "images_missing": len(missing),
        "missing_examples": missing[:5],
        "duplicate_images": sum(n - 1 for n in seen.values() if n > 1),
        "caption_defects": defects,
        "caption_tokens": {b: lengths.get(b, 0) for b in _bins(window)},
    }, set(found)


def _bins(window: int) -> list[str]:
    edges = [e for e in LENGTH_BINS if e < window]
    lows = [1] + [e + 1 for e in edges]
    return ([f"{lo}-{hi}" for lo, hi in zip(lows, edges + [window])]
            + [f">{window} (cut)"])


def _bin(n: int, window: int) -> str:
    if n > window:
        return f">{window} (cut)"
    lo = 1
    for edge in [e for e in LENGTH_BINS if e < window] + [window]:
        if n <= edge:
            return f"{lo}-{edge}"
        lo = edge + 1
    raise AssertionError("unreachable")


def format_report(report: dict) -> str:
    """The report as a few readable tables."""
    lines = ["| domain | split | records | classes | images found | missing | duplicates |"
             " caption tokens (window " + str(report["window"]) + ") |",
             "|---|---|---:|---:|---:|---:|---:|---|"]
    defects = []
    for name, domain in report["domains"].items():
        for split, c in domain["splits"].items():
            tokens = ", ".join(f"{k}: {v}" for k, v in c["caption_tokens"].items() if v)
            lines.append(f"| {name} | {split} | {c['records']} | {c['classes']} | "
                         f"{c['images_found']} | {c['images_missing']} | "
                         f"{c['duplicate_images']} | {tokens} |")
            if any(c["caption_defects"].values()):
                defects.append(f"- {name} {split}: " + ", ".join(
                    f"{k} {v}" for k, v in c["caption_defects"].items() if v))
        for pair, n in domain["images_shared_across_splits"].items():
            defects.append(f"- {name}: {n} images in both {pair}")
    if defects:
        lines += ["", "Caption defects and shared images:", *defects]
    lines += ["", "Problems: " + ("none" if not report["problems"] else "")]
    lines += [f"- {p}" for p in report["problems"]]
    return "\n".join(lines)


def token_counter(tokenizer) -> Callable[[str], int]:
    """A caption's length in tokens, start and end included, untruncated where the tokenizer
    can say (open_clip's SimpleTokenizer.encode); else as the tokenizer pads it."""
    encode = getattr(tokenizer, "encode", None)
    if callable(encode):
        return lambda text: len(encode(text)) + 2
    return lambda text: int((tokenizer([text])[0] != 0).sum())

"""Your own catalogue as open_clip and Hugging Face users keep it: CSV/TSV and JSONL files.

- CSV/TSV (open_clip's `--csv-img-key filepath --csv-caption-key title --csv-separator`): a
  header row, then one image per row; the separator is sniffed (tab if the header has one, else
  comma) unless given.
- JSONL (Hugging Face imagefolder's `metadata.jsonl`): one JSON object per line, `file_name`
  and a caption column (`text` by default).

A record's id is `<file>:<line>`, so that every error (a missing column or caption, a missing
image later) names the file and line. Relative image paths are relative to the image root.
"""
from __future__ import annotations

import csv
from pathlib import Path
from typing import Any, Optional

from .records import ImageRecord, parse_json_text

DEFAULT_KEYS = {"csv": ("filepath", "title"), "jsonl": ("file_name", "text")}


def load_table(path: str | Path, kind: str, *, img_key: Optional[str] = None,
               caption_key: Optional[str] = None, class_key: Optional[str] = None,
               separator: Optional[str] = None, domain: str = "") -> list[ImageRecord]:
    """Records of a CSV/TSV (`kind="csv"`) or JSONL (`kind="jsonl"`) file, in file order.

    Several rows may name the same image: their captions are gathered into one record (the
    image's captions, as in Karpathy files). Raises ValueError naming the file and line."""
    path = Path(path)
    img_key = img_key or DEFAULT_KEYS[kind][0]
    caption_key = caption_key or DEFAULT_KEYS[kind][1]
    rows = _csv_rows(path, separator) if kind == "csv" else _jsonl_rows(path)
    by_image: dict[str, dict[str, Any]] = {}
    for line, row in rows:
        where = f"{path}:{line}"
        missing = [k for k in (img_key, caption_key, class_key) if k and k not in row]
        if missing:
            raise ValueError(f"{where}: no {missing} column (columns: {sorted(row)}); set "
                             "dataset.img_key / caption_key / class_key")
        image, caption = row[img_key], row[caption_key]
        if not isinstance(image, str) or not image.strip():
            raise ValueError(f"{where}: empty image path in column {img_key!r}")
        if not isinstance(caption, str) or not caption.strip():
            raise ValueError(f"{where}: empty caption in column {caption_key!r}")
        label = row[class_key] if class_key else None
        if class_key and (not isinstance(label, str) or not label.strip()):
            raise ValueError(f"{where}: empty class in column {class_key!r}")
        entry = by_image.setdefault(image.strip(), {"id": f"{path.name}:{line}",
                                                    "class": label, "captions": []})
        if class_key and entry["class"] != label:
            raise ValueError(f"{where}: image {image!r} has class {label!r} here and "
                             f"{entry['class']!r} on an earlier line")
        entry["captions"].append(caption.strip())
    if not by_image:
        raise ValueError(f"{path}: no records")
    return [ImageRecord(e["id"], image, e["class"], tuple(e["captions"]), domain=domain)
            for image, e in by_image.items()]


def _csv_rows(path: Path, separator: Optional[str]) -> list[tuple[int, dict[str, str]]]:
    try:
        text = path.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError as e:
        raise ValueError(f"{path}: not UTF-8 text ({e})") from None
    lines = text.splitlines()
    if not lines:
        raise ValueError(f"{path}: empty file")
    sep = separator or ("\t" if "\t" in lines[0] else ",")
    reader = csv.DictReader(lines, delimiter=sep)
    rows = []
    for row in reader:
        if None in row:  # more cells than header columns
            raise ValueError(f"{path}:{reader.line_num}: more cells than the header's "
                             f"{len(reader.fieldnames)} columns (separator {sep!r})")
        rows.append((reader.line_num, row))
    return rows


def _jsonl_rows(path: Path) -> list[tuple[int, dict[str, Any]]]:
    rows = []
    with open(path, encoding="utf-8-sig") as f:
        for line_no, line in enumerate(f, start=1):
            if not line.strip():
                continue
            row = parse_json_text(line, f"{path}:{line_no}", reject_duplicate_keys=True)
            if not isinstance(row, dict):
                raise ValueError(f"{path}:{line_no}: expected a JSON object")
            rows.append((line_no, row))
    return rows

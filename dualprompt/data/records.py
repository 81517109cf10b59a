"""Caption records shared by every dataset loader (FDRD, Karpathy COCO / Flickr30k).

Pure Python, no torch: a record says which image (a path relative to a user-given image root),
its ground-truth captions and, for FDRD, its fine class and negative captions. Loaders build
records; datasets, samplers and the evaluation read them.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from enum import Enum
from pathlib import Path, PurePosixPath, PureWindowsPath
from typing import Any

from ..config import StrEnum


class CaptionFormat(StrEnum):
    """The caption-file formats a retrieval domain can be read from."""

    fdrd = "fdrd"  # FDRD caption JSON (all three record shapes of the release)
    karpathy = "karpathy"  # Karpathy-split JSON (dataset_coco.json, dataset_flickr30k.json)
    csv = "csv"  # CSV/TSV, open_clip's conventions (data/custom.py)
    jsonl = "jsonl"  # JSON lines, Hugging Face imagefolder's metadata.jsonl (data/custom.py)
    webdataset = "webdataset"  # tar shards, open_clip's keys (data/shards.py)


class KarpathySplit(StrEnum):
    train = "train"
    val = "val"
    test = "test"
    restval = "restval"


class NegativeKind(str, Enum):
    """Where a negative caption comes from."""

    SHIPPED = "shipped"  # shipped in the caption file (FDRD: a class swap made by the authors)
    CLASS_SWAP = "class_swap"  # the positive with its class name replaced by another class
    ATTRIBUTE_SWAP = "attribute_swap"  # this class name on another image's description


@dataclass(frozen=True)
class Negative:
    """One negative caption of an image.

    Attributes:
        text: the caption.
        class_name: the class the negative names: the swapped-in class for a class swap, the
            record's own class for an attribute swap, ``""`` when unknown (a shipped negative
            that names no class of the domain other than those of the positive).
        kind: a `NegativeKind` value; plain strings ("shipped", ...) are accepted and converted.
    """

    text: str
    class_name: str
    kind: NegativeKind

    def __post_init__(self) -> None:
        if not isinstance(self.text, str) or not self.text.strip():
            raise ValueError(f"negative text must be a non-empty string, got {self.text!r}")
        if not isinstance(self.class_name, str):
            raise ValueError(f"negative class_name must be a string, got {self.class_name!r}")
        try:
            object.__setattr__(self, "kind", NegativeKind(self.kind))
        except ValueError:
            kinds = ", ".join(k.value for k in NegativeKind)
            raise ValueError(f"negative kind must be one of {kinds}, got {self.kind!r}") from None


@dataclass(frozen=True)
class ImageRecord:
    """One image and its captions.

    Attributes:
        image_id: unique key within its source file (FDRD: the JSON key; Karpathy: ``imgid``).
        file_name: POSIX path of the image relative to a user-given image root.
        class_name: fine class as written in the source (FDRD), ``None`` for Karpathy data.
        captions: ground-truth captions (FDRD: one positive; Karpathy: usually five).
        negatives: negative captions (FDRD only).
        domain: dataset / FDRD domain name, e.g. ``"pets"`` or ``"flickr30k"``.
    """

    image_id: str
    file_name: str
    class_name: str | None
    captions: tuple[str, ...]
    negatives: tuple[Negative, ...] = field(default=())
    domain: str = ""

    def __post_init__(self) -> None:
        object.__setattr__(self, "captions", tuple(self.captions))
        object.__setattr__(self, "negatives", tuple(self.negatives))
        where = f"record {self.image_id!r}"
        if not isinstance(self.image_id, str) or not self.image_id:
            raise ValueError(f"image_id must be a non-empty string, got {self.image_id!r}")
        check_relative_path(self.file_name, where)
        valid_class = isinstance(self.class_name, str) and bool(self.class_name.strip())
        if self.class_name is not None and not valid_class:
            raise ValueError(f"{where}: class_name must be None or a non-empty string, "
                             f"got {self.class_name!r}")
        if not self.captions:
            raise ValueError(f"{where}: needs at least one caption")
        for caption in self.captions:
            if not isinstance(caption, str) or not caption.strip():
                raise ValueError(f"{where}: captions must be non-empty strings, got {caption!r}")
        for negative in self.negatives:
            if not isinstance(negative, Negative):
                kind = type(negative).__name__
                raise ValueError(f"{where}: negatives must be Negative objects, got {kind}")


def check_relative_path(name: object, where: str) -> str:
    """Return ``name`` if it is a safe relative image path, else raise ValueError.

    Refused: non-strings, empty names, absolute paths (POSIX or Windows, drive letters
    included) and names with a ``..`` component, so a record can never point outside the
    image root it is joined to. ``where`` names the file and record for the error message.
    """
    if not isinstance(name, str) or not name.strip():
        raise ValueError(f"{where}: file name must be a non-empty string, got {name!r}")
    if "\x00" in name:
        raise ValueError(f"{where}: file name contains a NUL byte: {name!r}")
    windows = PureWindowsPath(name)
    if PurePosixPath(name).is_absolute() or windows.is_absolute() or windows.drive or windows.root:
        raise ValueError(f"{where}: file name must be relative to the image root, "
                         f"got absolute {name!r}")
    if ".." in windows.parts:  # PureWindowsPath splits on both '/' and '\\'
        raise ValueError(f"{where}: file name must not contain '..' components, got {name!r}")
    return name


def read_json_file(path: str | Path, reject_duplicate_keys: bool = False) -> Any:
    """Parse a JSON file, turning every failure into a ValueError that names the file.

    Args:
        path: the file.
        reject_duplicate_keys: raise when an object repeats a key (``json`` would silently keep
            the last one, dropping records).
    """
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8-sig")  # a leading BOM is tolerated
    except UnicodeDecodeError as err:
        raise ValueError(f"{path}: not UTF-8 text ({err})") from None
    return parse_json_text(text, str(path), reject_duplicate_keys)


def parse_json_text(text: str, source: str, reject_duplicate_keys: bool = False) -> Any:
    """`read_json_file` on a string; ``source`` names it in error messages."""
    hook = _reject_duplicates if reject_duplicate_keys else None
    try:
        return json.loads(text, object_pairs_hook=hook)
    except json.JSONDecodeError as err:
        raise ValueError(
            f"{source}: invalid JSON at line {err.lineno} column {err.colno} "
            f"(char {err.pos}): {err.msg}"
        ) from None
    except _DuplicateKey as err:
        raise ValueError(f"{source}: duplicate key {err.args[0]!r} in a JSON object") from None
    except RecursionError:
        raise ValueError(f"{source}: JSON nested too deeply") from None


class _DuplicateKey(Exception):
    pass


def _reject_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    obj = dict(pairs)
    if len(obj) != len(pairs):
        seen: set[str] = set()
        for key, _ in pairs:
            if key in seen:
                raise _DuplicateKey(key)
            seen.add(key)
    return obj


def format_problems(source: str, problems: list[tuple[str, str]], max_shown: int = 5) -> str:
    """One error message for ``(record, what is wrong)`` pairs: file, count, first few."""
    shown = "; ".join(f"{record}: {what}" for record, what in problems[:max_shown])
    more = f" (and {len(problems) - max_shown} more)" if len(problems) > max_shown else ""
    return f"{source}: {len(problems)} malformed record(s): {shown}{more}"

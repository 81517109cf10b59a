"""Karpathy-split caption files: ``dataset_flickr30k.json`` and ``dataset_coco.json``.

Format: ``{"images": [{"filename", "filepath"?, "split", "sentences": [{"raw", ...}], "imgid",
...}], "dataset": "coco"}``. ``filepath`` (COCO: ``train2014`` / ``val2014``) is the folder of
the image under the image root; Flickr30k has none.

Splits: ``"train"`` means ``train`` + ``restval``, the standard Karpathy practice (COCO:
113,287 training images; Flickr30k has no ``restval``, so 29,000); ``"val"``, ``"test"`` and
``"restval"`` select exactly that split (COCO: 5,000 each in val and test; Flickr30k: 1,014 val
and 1,000 test).
"""

from __future__ import annotations

from pathlib import Path
from types import MappingProxyType

from .records import ImageRecord, check_relative_path, format_problems, read_json_file

_SPLITS = MappingProxyType({
    "train": frozenset({"train", "restval"}),
    "val": frozenset({"val"}),
    "test": frozenset({"test"}),
    "restval": frozenset({"restval"}),
})
_KNOWN = frozenset({"train", "val", "test", "restval"})


def _record_name(index: int, image: object) -> str:
    name = image.get("filename") if isinstance(image, dict) else None
    return f"images[{index}]" + (f" ({name!r:.80})" if isinstance(name, str) else "")


def _captions(image: dict) -> tuple[str, ...]:
    sentences = image.get("sentences")
    if not isinstance(sentences, list) or not sentences:
        raise ValueError("'sentences' must be a non-empty list")
    captions = []
    for i, sentence in enumerate(sentences):
        raw = sentence.get("raw") if isinstance(sentence, dict) else None
        if not isinstance(raw, str) or not raw.strip():
            raise ValueError(f"sentences[{i}] has no non-empty 'raw' string")
        captions.append(raw.strip())
    return tuple(captions)


def _parse_image(image: object, domain: str) -> tuple[str, ImageRecord]:
    """The split and record of one entry of ``images``; ValueError says what is wrong."""
    if not isinstance(image, dict):
        raise ValueError(f"not a JSON object (got {type(image).__name__})")
    split = image.get("split")
    if not isinstance(split, str) or split not in _KNOWN:
        raise ValueError(f"'split' must be one of {sorted(_KNOWN)}, got {split!r:.40}")
    filename, filepath = image.get("filename"), image.get("filepath")
    if not isinstance(filename, str) or not filename.strip():
        raise ValueError("'filename' must be a non-empty string")
    if filepath is not None and not isinstance(filepath, str):
        raise ValueError(f"'filepath' must be a string, got {type(filepath).__name__}")
    file_name = check_relative_path(f"{filepath}/{filename}" if filepath else filename, "file name")
    imgid = image.get("imgid")
    if imgid is not None and (isinstance(imgid, bool) or not isinstance(imgid, (int, str))):
        raise ValueError(f"'imgid' must be an integer or a string, got {imgid!r:.40}")
    image_id = str(imgid) if imgid is not None else file_name
    return split, ImageRecord(image_id, file_name, None, _captions(image), (), domain)


def load_karpathy_json(path: str | Path, split: str) -> list[ImageRecord]:
    """Records of one Karpathy split, in file order.

    Args:
        path: ``dataset_flickr30k.json`` or ``dataset_coco.json`` (or any file of that format).
        split: ``"train"`` (= train + restval), ``"val"``, ``"test"`` or ``"restval"``.

    Returns:
        Records with ``image_id`` = ``str(imgid)`` (the file name when there is no ``imgid``),
        ``file_name`` = ``filepath/filename`` relative to the image root, ``class_name`` None,
        ``captions`` = the stripped ``raw`` sentences, ``domain`` = the ``dataset`` field (else
        the file stem).

    Raises:
        ValueError: naming the file and the first offending entries (every entry is checked,
            whatever the split): invalid JSON, missing ``images``, bad fields, unknown split
            values, absolute or ``..`` paths, duplicate image ids.
    """
    if not isinstance(split, str) or split not in _SPLITS:
        raise ValueError(f"split must be one of {sorted(_SPLITS)}, got {split!r}")
    path = Path(path)
    data = read_json_file(path)
    images = data.get("images") if isinstance(data, dict) else None
    if not isinstance(images, list):
        raise ValueError(f"{path}: expected a JSON object with an 'images' list")
    dataset = data.get("dataset")
    domain = dataset if isinstance(dataset, str) and dataset else path.stem
    problems: list[tuple[str, str]] = []
    parsed: list[tuple[str, ImageRecord]] = []
    first_seen: dict[str, str] = {}
    for index, image in enumerate(images):
        name = _record_name(index, image)
        try:
            parsed.append(_parse_image(image, domain))
        except ValueError as err:
            problems.append((name, str(err)))
            continue
        image_id = parsed[-1][1].image_id
        if image_id in first_seen:
            first = first_seen[image_id]
            problems.append((name, f"duplicate image id {image_id!r} (first at {first})"))
        first_seen.setdefault(image_id, name)
    if problems:
        raise ValueError(format_problems(str(path), problems))
    return [record for image_split, record in parsed if image_split in _SPLITS[split]]

"""FDRD caption files: class matching, parsing, defect report.

An FDRD caption file (see ``shared/fdrd/README.md``) is one JSON object keyed by image id; the
record schema is detected per record:

- A: ``{file_name, class_name, number, file_path, positive, negative}``
  (positive ``"This is a {class}.{description}"``);
- B: ``{file_name, file_path, positive, negative}``: no class field, the class is the key
  without its trailing ``_<number>`` (``basset_hound_12`` -> ``basset_hound``);
- C: ``{file_name, class_name, file_path, positive, negative: []}``
  (positive ``"This is a photo of {class}.{description}"``).

Class matching. A text *mentions* a class when the class string occurs in it as a substring,
ignoring case (``str.casefold``) and treating ``_`` and space as equal (``basset_hound`` matches
"basset hound"; ``orange_dahlia`` matches "orange_dahlia"). This lenient match decides every
cleaning step and finds the glued forms the caption generator made ("seaDHC-6", "Siameses").
A text *names a class as a token* when the match, in addition, is not glued to a letter, digit,
``_`` or ``-`` (``A320`` is mentioned but not named as a token by "A320-214"); only the
"positive names another class" defect uses it, so that a longer designation is not counted as
another class. Swapping a class (negative cleaning, `negatives.py`) replaces its whole words
(plurals and hyphenated words included), see `negatives._replace_class`. With these definitions
the defect counts of `FdrdReport` equal the table of ``shared/fdrd/README.md`` on flower, pets
and plane, cell for cell.

Known limit: FGVC-Aircraft class keys write ``/`` as ``_`` (``F-16A_B``, ``F_A-18``; the
captions say "F-16A/B", "F/A-18"). They are not matched, as in the README's counts (these 66
records are 66 of plane's 85 "positive lacks its class"), so those records get no generated
class swap (attribute swaps fill in), their shipped negatives' ``class_name`` is ``""`` when
the swapped-in class is one of these two, and a swap that inserts them writes "F-16A B".
"""

from __future__ import annotations

import logging
import re
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, fields
from pathlib import Path, PurePosixPath

from .records import (
    ImageRecord,
    Negative,
    NegativeKind,
    check_relative_path,
    format_problems,
    read_json_file,
)

logger = logging.getLogger(__name__)

_IMAGE_EXTENSIONS = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff"})
_KEY_CLASS = re.compile(r"^(.+)_(\d+)$")
_DOMAIN_AFFIXES = re.compile(r"^(?:inter_)?(.+?)(?:_(?:train|val|test))?$")
_REQUIRED_FIELDS = ("file_name", "positive", "negative")


# ---------------------------------------------------------------------------------------------
# class matching


def _fold(text: str) -> str:
    """Case- and underscore-insensitive form used by `mentions_class`."""
    return text.casefold().replace("_", " ")


def mentions_class(text: str, class_name: str) -> bool:
    """Whether ``text`` mentions ``class_name`` (the lenient match of the module docstring)."""
    return _fold(class_name) in _fold(text)


def class_core(class_name: str) -> str:
    """Regex source of the class, ``_`` and space both matching either (no flags, no anchors)."""
    return "".join("[ _]" if ch in " _" else re.escape(ch) for ch in class_name)


def class_pattern(class_name: str) -> re.Pattern[str]:
    """Pattern of the class for replacement: case-insensitive, ``_`` == space."""
    return re.compile(class_core(class_name), re.IGNORECASE)


def token_pattern(class_name: str) -> re.Pattern[str]:
    """`class_pattern` that must not touch a letter, digit, ``_`` or ``-`` on either side."""
    return re.compile(rf"(?<![\w-]){class_core(class_name)}(?![\w-])", re.IGNORECASE)


def display_name(class_name: str) -> str:
    """How a class is written into a generated caption: underscores become spaces."""
    return class_name.replace("_", " ")


# ---------------------------------------------------------------------------------------------
# parsing


@dataclass(frozen=True)
class _Parsed:
    key: str
    schema: str
    class_name: str
    file_name: str
    positive: str
    negatives: tuple[str, ...]


def _non_empty_str(value: object) -> bool:
    return isinstance(value, str) and bool(value.strip())


def _image_file_name(name: str, file_path: object) -> str:
    """Relative image name: ``file_name``, plus the extension of ``file_path`` (or ``.jpg``)
    when it has none; plane ``1514522`` -> ``1514522.jpg``, caltech ``Faces_image_0426.jpg``
    unchanged."""
    if PurePosixPath(name).suffix.lower() in _IMAGE_EXTENSIONS:
        return name
    if isinstance(file_path, str):
        shipped = PurePosixPath(file_path.replace("\\", "/"))
        if shipped.stem == PurePosixPath(name).name and shipped.suffix.lower() in _IMAGE_EXTENSIONS:
            return name + shipped.suffix
    return name + ".jpg"


def _parse_record(key: str, value: object) -> _Parsed:
    """Validate one record; raise ValueError saying what is wrong (without the key)."""
    if not key:
        raise ValueError("the image id (key) is empty")
    if not isinstance(value, dict):
        raise ValueError(f"not a JSON object (got {type(value).__name__})")
    missing = [name for name in _REQUIRED_FIELDS if name not in value]
    if missing:
        raise ValueError("missing field(s) " + ", ".join(repr(name) for name in missing))
    if not _non_empty_str(value["positive"]):
        raise ValueError(f"positive must be a non-empty string, got {value['positive']!r:.60}")
    negatives = value["negative"]
    if not isinstance(negatives, list):
        raise ValueError(f"negative is not a list (got {type(negatives).__name__})")
    for i, text in enumerate(negatives):
        if not _non_empty_str(text):
            raise ValueError(f"negative[{i}] must be a non-empty string, got {text!r:.60}")
    if "class_name" in value:
        schema, class_name = ("A" if "number" in value else "C"), value["class_name"]
        if not _non_empty_str(class_name):
            raise ValueError(f"class_name must be a non-empty string, got {class_name!r:.60}")
    else:
        match = _KEY_CLASS.match(key)
        if match is None or not match.group(1).strip():
            raise ValueError("no class_name field and the key does not end in '_<number>'")
        schema, class_name = "B", match.group(1)
    file_name = check_relative_path(value["file_name"], "file_name")
    file_name = _image_file_name(file_name, value.get("file_path"))
    return _Parsed(key, schema, class_name, file_name, value["positive"], tuple(negatives))


def _domain_from_path(path: Path) -> str:
    """``inter_caltech-101_train.json`` -> ``caltech-101``; ``pets_test.json`` -> ``pets``."""
    match = _DOMAIN_AFFIXES.match(path.stem)
    return match.group(1) if match else path.stem


# ---------------------------------------------------------------------------------------------
# defect report


@dataclass(frozen=True)
class Defect:
    """How often a defect occurs and the first record keys where it does."""

    count: int
    examples: tuple[str, ...]


@dataclass(frozen=True)
class FdrdReport:
    """What `load_fdrd_json` found in one file. Defects (exact string comparisons):

    - ``negatives_identical``: shipped negatives character-identical to the positive (counted
      per negative); ``records_with_identical_negative``: records with at least one.
    - ``negatives_naming_true_class``: shipped negatives, not identical to the positive, that
      still mention the record's class (lenient match).
    - ``records_with_duplicate_negatives``: records whose shipped negatives are not all
      distinct (character-identical strings).
    - ``positives_naming_other_class``: positives that do not mention their own class but name
      another class of the file as a token.
    - ``positives_lacking_class``: positives that do not mention their own class.
    - ``records_sharing_positive``: records whose positive is identical to another record's
      (ties in image-to-text retrieval).
    """

    source: str
    domain: str
    n_records: int
    n_classes: int
    schemas: tuple[tuple[str, int], ...]
    n_shipped_negatives: int
    negatives_identical: Defect
    records_with_identical_negative: Defect
    negatives_naming_true_class: Defect
    records_with_duplicate_negatives: Defect
    positives_naming_other_class: Defect
    positives_lacking_class: Defect
    records_sharing_positive: Defect

    def defects(self) -> dict[str, Defect]:
        """The defect fields by name."""
        values = {f.name: getattr(self, f.name) for f in fields(self)}
        return {name: value for name, value in values.items() if isinstance(value, Defect)}

    def summary(self) -> str:
        """Multi-line, human-readable report for logs."""
        schemas = ", ".join(f"{name}={count}" for name, count in self.schemas)
        lines = [
            f"{self.source} [{self.domain}]: {self.n_records} records, {self.n_classes} classes, "
            f"schema {schemas}, {self.n_shipped_negatives} shipped negatives"
        ]
        for name, defect in self.defects().items():
            example = f" (e.g. {', '.join(defect.examples)})" if defect.examples else ""
            lines.append(f"  {name.replace('_', ' ')}: {defect.count}{example}")
        return "\n".join(lines)


class _Tally:
    """Counts and example keys per defect while scanning a file."""

    def __init__(self, max_examples: int) -> None:
        self.counts: Counter[str] = Counter()
        self.examples: dict[str, list[str]] = {}
        self.max_examples = max_examples

    def add(self, name: str, key: str, count: int = 1) -> None:
        if count <= 0:
            return
        self.counts[name] += count
        examples = self.examples.setdefault(name, [])
        if len(examples) < self.max_examples and key not in examples:
            examples.append(key)

    def defect(self, name: str) -> Defect:
        return Defect(self.counts[name], tuple(self.examples.get(name, ())))


def _measure(parsed: Sequence[_Parsed], classes: Sequence[str], max_examples: int) -> _Tally:
    folded = {c: _fold(c) for c in classes}
    positives = Counter(p.positive for p in parsed)
    tally = _Tally(max_examples)
    for p in parsed:
        own = folded[p.class_name]
        identical = sum(text == p.positive for text in p.negatives)
        tally.add("negatives_identical", p.key, identical)
        tally.add("records_with_identical_negative", p.key, int(identical > 0))
        naming = sum(text != p.positive and own in _fold(text) for text in p.negatives)
        tally.add("negatives_naming_true_class", p.key, naming)
        duplicates = len(set(p.negatives)) < len(p.negatives)
        tally.add("records_with_duplicate_negatives", p.key, int(duplicates))
        if own not in _fold(p.positive):
            tally.add("positives_lacking_class", p.key)
            other = any(token_pattern(c).search(p.positive) for c in classes if c != p.class_name)
            tally.add("positives_naming_other_class", p.key, int(other))
        tally.add("records_sharing_positive", p.key, int(positives[p.positive] > 1))
    return tally


class _ClassCounter:
    """Counts class mentions in a text, a mention inside a longer class's mention excluded
    ("tree mallow" mentions ``tree_mallow`` once and ``mallow`` zero times)."""

    def __init__(self, classes: Sequence[str]) -> None:
        self.folded = {c: _fold(c) for c in classes}
        self.longer = {  # class -> (longer class containing it, how often)
            c: [(o, g.count(f)) for o, g in self.folded.items() if len(g) > len(f) and f in g]
            for c, f in self.folded.items()
        }

    def __call__(self, text: str) -> dict[str, int]:
        text = _fold(text)
        raw = {c: text.count(f) for c, f in self.folded.items() if f in text}
        return {c: n - sum(raw.get(o, 0) * k for o, k in self.longer[c]) for c, n in raw.items()}


def _shipped_class(text: str, positive_counts: Mapping[str, int], count: _ClassCounter) -> str:
    """The class a shipped negative names: the longest class mentioned more often than in the
    positive ("This is a mallow." for "This is a tree mallow." -> ``mallow``); ``""`` if none."""
    new = [c for c, n in count(text).items() if n > positive_counts.get(c, 0)]
    return max(new, key=len) if new else ""


# ---------------------------------------------------------------------------------------------
# loading


def _record(p: _Parsed, domain: str, count: _ClassCounter) -> ImageRecord:
    in_positive = count(p.positive)
    negatives = tuple(Negative(text, _shipped_class(text, in_positive, count), NegativeKind.SHIPPED)
                      for text in p.negatives)
    return ImageRecord(p.key, p.file_name, p.class_name, (p.positive,), negatives, domain)


def parse_fdrd(
    data: object, source: str, domain: str = "", max_examples: int = 5
) -> tuple[list[ImageRecord], FdrdReport]:
    """Records and defect report of an already decoded FDRD caption object.

    Raises ValueError naming ``source`` and the first offending record keys when ``data`` is
    not a non-empty object of valid records. See `load_fdrd_json`.
    """
    if not isinstance(data, dict):
        kind = type(data).__name__
        raise ValueError(f"{source}: expected a JSON object keyed by image id, got {kind}")
    if not data:
        raise ValueError(f"{source}: contains no records")
    parsed: list[_Parsed] = []
    problems: list[tuple[str, str]] = []
    for key, value in data.items():
        try:
            parsed.append(_parse_record(str(key), value))
        except ValueError as err:
            problems.append((repr(key), str(err)))
    if problems:
        raise ValueError(format_problems(source, problems))
    classes = list(dict.fromkeys(p.class_name for p in parsed))
    tally = _measure(parsed, classes, max_examples)
    count = _ClassCounter(classes)
    try:
        records = [_record(p, domain, count) for p in parsed]
    except ValueError as err:  # a check of ImageRecord that _parse_record missed
        raise ValueError(f"{source}: {err}") from None
    report = FdrdReport(
        source=source,
        domain=domain,
        n_records=len(records),
        n_classes=len(classes),
        schemas=tuple(sorted(Counter(p.schema for p in parsed).items())),
        n_shipped_negatives=sum(len(p.negatives) for p in parsed),
        **{name: tally.defect(name) for name in _DEFECT_NAMES},
    )
    return records, report


_DEFECT_NAMES = (
    "negatives_identical",
    "records_with_identical_negative",
    "negatives_naming_true_class",
    "records_with_duplicate_negatives",
    "positives_naming_other_class",
    "positives_lacking_class",
    "records_sharing_positive",
)


def load_fdrd_json(
    path: str | Path, domain: str | None = None, max_examples: int = 5
) -> tuple[list[ImageRecord], FdrdReport]:
    """Read one FDRD caption file.

    Args:
        path: the JSON file.
        domain: stored on every record; default the file stem without an ``inter_`` prefix and
            a ``_train``/``_val``/``_test`` suffix (``inter_car_train.json`` -> ``car``).
        max_examples: example keys kept per defect in the report.

    Returns:
        The records in file order (``captions`` = the one positive, ``negatives`` = the shipped
        ones, uncleaned, kind ``"shipped"``; ``file_name`` relative, with an image extension)
        and an `FdrdReport` of the file's defects, also logged.

    Raises:
        ValueError: naming the file and, for bad records, the first offending keys; invalid
            JSON (with its position), duplicate keys, a non-object top level, no records.
    """
    path = Path(path)
    data = read_json_file(path, reject_duplicate_keys=True)
    domain = domain if domain is not None else _domain_from_path(path)
    records, report = parse_fdrd(data, str(path), domain, max_examples)
    defects = report.defects()
    has_defects = any(d.count for name, d in defects.items() if name != "records_sharing_positive")
    logger.log(logging.WARNING if has_defects else logging.INFO, "%s", report.summary())
    return records, report

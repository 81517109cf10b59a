"""FDRD caption files: parsing, defect report, negative cleaning.

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
another class. Swapping a class replaces its whole words (plurals and hyphenated words
included), see `_replace_class`. With these definitions the defect counts of `FdrdReport` equal
the table of ``shared/fdrd/README.md`` on flower, pets and plane, cell for cell.

Known limit: FGVC-Aircraft class keys write ``/`` as ``_`` (``F-16A_B``, ``F_A-18``; the
captions say "F-16A/B", "F/A-18"). They are not matched, as in the README's counts (these 66
records are 66 of plane's 85 "positive lacks its class"), so those records get no generated
class swap (attribute swaps fill in), their shipped negatives' ``class_name`` is ``""`` when
the swapped-in class is one of these two, and a swap that inserts them writes "F-16A B".
"""

from __future__ import annotations

import logging
import random
import re
from collections import Counter
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, fields, replace
from pathlib import Path, PurePosixPath
from typing import TypeVar

from .records import (
    ImageRecord,
    Negative,
    NegativeKind,
    check_relative_path,
    format_problems,
    read_json_file,
)

logger = logging.getLogger(__name__)

_T = TypeVar("_T")
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


def _class_core(class_name: str) -> str:
    return "".join("[ _]" if ch in " _" else re.escape(ch) for ch in class_name)


def class_pattern(class_name: str) -> re.Pattern[str]:
    """Pattern of the class for replacement: case-insensitive, ``_`` == space."""
    return re.compile(_class_core(class_name), re.IGNORECASE)


def token_pattern(class_name: str) -> re.Pattern[str]:
    """`class_pattern` that must not touch a letter, digit, ``_`` or ``-`` on either side."""
    return re.compile(rf"(?<![\w-]){_class_core(class_name)}(?![\w-])", re.IGNORECASE)


def display_name(class_name: str) -> str:
    """How a class is written into a generated caption: underscores become spaces."""
    return class_name.replace("_", " ")


def _text_key(text: str) -> str:
    """Comparison key of captions: case, ``_``/space and whitespace runs are ignored."""
    return " ".join(text.casefold().replace("_", " ").split())


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


# ---------------------------------------------------------------------------------------------
# negative cleaning


@dataclass(frozen=True)
class NegativeReport:
    """What `clean_negatives` kept, dropped and generated.

    ``shipped`` counts the negatives the input records carried (FDRD: the shipped ones); each
    is kept or dropped once: ``shipped == kept_shipped + dropped_identical +
    dropped_names_true_class + dropped_duplicate + dropped_surplus`` (surplus: valid, but more
    than the class-swap share or than k). The output holds ``kept_shipped + class_swaps +
    attribute_swaps == k * n_records - missing_negatives`` negatives.
    ``rejected_candidates``: generated captions thrown away (equal to the positive or to a
    negative of the record, or still mentioning the class they were meant to replace).
    ``records_without_class_mention`` / ``records_class_glued`` / ``records_single_class``:
    records that get no generated class swap because the positive does not mention its class /
    also mentions it inside a longer word ("watch" and "wristwatch", so a swap would still
    name it) / the domain has one class. The first two also give no attribute-swap donors.
    ``records_short``: records left with fewer than k negatives (``short_examples``: ids).
    """

    n_records: int
    k: int
    shipped: int
    kept_shipped: int
    dropped_identical: int
    dropped_names_true_class: int
    dropped_duplicate: int
    dropped_surplus: int
    class_swaps: int
    class_swaps_same_meta_category: int
    attribute_swaps: int
    rejected_candidates: int
    records_without_class_mention: int
    records_class_glued: int
    records_single_class: int
    records_short: int
    missing_negatives: int
    short_examples: tuple[str, ...] = ()

    def summary(self) -> str:
        """Multi-line, human-readable report for logs."""
        lines = [f"negatives for {self.n_records} records, k={self.k}:"]
        lines += [f"  {name.replace('_', ' ')}: {getattr(self, name)}" for name in _tallied()]
        lines.append(f"  records short: {self.records_short}"
                     + (f" (e.g. {', '.join(self.short_examples)})" if self.short_examples else ""))
        return "\n".join(lines)


def _tallied() -> list[str]:
    """NegativeReport fields counted while cleaning."""
    untallied = ("n_records", "k", "records_short", "short_examples")
    return [f.name for f in fields(NegativeReport) if f.name not in untallied]


def _lazy_shuffle(items: Sequence[_T], rng: random.Random) -> Iterator[_T]:
    """Items in a random order, paying only for those consumed (sparse Fisher-Yates)."""
    moved: dict[int, int] = {}
    for i in range(len(items)):
        j = rng.randrange(i, len(items))
        pick = moved.get(j, j)
        moved[j] = moved.get(i, i)
        yield items[pick]


def _replace_class(text: str, old: str, replacement: str) -> str:
    """``text`` with the whole-word occurrences of class ``old`` replaced (plurals and
    hyphenated words count: "roses" -> "desert-roses", "one-dollar bill", "octopus-like"),
    or, when there are none, every (glued) occurrence: "seaDHC-6" -> "seaCessna 208"."""
    start = r"(?:(?<![\w-])|(?<=[^\W\d_]-))"  # a non-word, or "one-" before
    end = r"(?=(?:e?s)?(?:-[^\W\d_]|(?![\w-])))"  # plural, then "-like" or a non-word
    word = re.compile(start + _class_core(old) + end, re.IGNORECASE)
    pattern = word if word.search(text) else class_pattern(old)
    return pattern.sub(lambda _: replacement, text)


def _swappable(text: str, class_name: str) -> bool:
    """Whether replacing the class in ``text`` leaves no mention of it: False when the text
    does not mention it, or also inside a longer word ("watch" and "wristwatch")."""
    if not mentions_class(text, class_name):
        return False
    return not mentions_class(_replace_class(text, class_name, " "), class_name)


@dataclass(frozen=True)
class _Domain:
    """What the generators need to know about the domain, built once per call."""

    classes: tuple[str, ...]
    same_meta: Mapping[str, tuple[str, ...]]  # class -> other classes of its meta-category
    others: Mapping[str, tuple[str, ...]]  # class -> the remaining other classes
    donors: tuple[ImageRecord, ...]  # records whose positive has a swappable class, by class
    donor_spans: Mapping[str, tuple[int, int]]  # class -> its slice of `donors`


def _build_domain(records: Sequence[ImageRecord], classes: Sequence[str],
                  meta_category: Mapping[str, str] | None) -> _Domain:
    unique = tuple(dict.fromkeys(classes))
    meta = meta_category or {}
    same = {c: tuple(o for o in unique if o != c and c in meta and meta.get(o) == meta[c])
            for c in unique}
    others = {c: tuple(o for o in unique if o != c and o not in same[c]) for c in unique}
    order = {c: i for i, c in enumerate(unique)}
    donors = sorted((r for r in records if _swappable(r.captions[0], str(r.class_name))),
                    key=lambda r: (order[str(r.class_name)], r.image_id))  # not the input order
    spans: dict[str, tuple[int, int]] = {}
    for i, donor in enumerate(donors):
        start, _ = spans.get(str(donor.class_name), (i, i))
        spans[str(donor.class_name)] = (start, i + 1)
    return _Domain(unique, same, others, tuple(donors), spans)


def _class_swaps(record: ImageRecord, domain: _Domain, rng: random.Random,
                 counts: Counter[str]) -> Iterator[Negative]:
    """Class-swap candidates, classes of the same meta-category first, each group shuffled."""
    cls, positive = str(record.class_name), record.captions[0]
    for group in (domain.same_meta[cls], domain.others[cls]):
        for other in _lazy_shuffle(group, rng):
            text = _replace_class(positive, cls, display_name(other))
            if mentions_class(text, cls):  # "rose" -> "desert-rose"
                counts["rejected_candidates"] += 1
            else:
                yield Negative(text, other, NegativeKind.CLASS_SWAP)


def _attribute_swaps(record: ImageRecord, domain: _Domain,
                     rng: random.Random) -> Iterator[Negative]:
    """Attribute-swap candidates: another class's positive carrying this record's class."""
    cls = str(record.class_name)
    start, end = domain.donor_spans.get(cls, (0, 0))
    for i in _lazy_shuffle(range(len(domain.donors) - (end - start)), rng):  # skip own class
        donor = domain.donors[i if i < start else i + end - start]
        text = _replace_class(donor.captions[0], str(donor.class_name), display_name(cls))
        yield Negative(text, cls, NegativeKind.ATTRIBUTE_SWAP)


def _valid_shipped(record: ImageRecord, counts: Counter[str]) -> list[Negative]:
    """The record's negatives that are neither the positive, nor naming the true class (an
    attribute swap names it by design), nor a repeat."""
    cls, positive_key = str(record.class_name), _text_key(record.captions[0])
    seen = {positive_key}
    valid: list[Negative] = []
    for negative in record.negatives:
        key = _text_key(negative.text)
        counts["shipped"] += 1
        if key == positive_key:
            counts["dropped_identical"] += 1
        elif negative.kind != NegativeKind.ATTRIBUTE_SWAP and mentions_class(negative.text, cls):
            counts["dropped_names_true_class"] += 1
        elif key in seen:
            counts["dropped_duplicate"] += 1
        else:
            valid.append(negative)
            seen.add(key)
    return valid


def _take(candidates: Iterator[Negative], n: int, chosen: list[Negative], seen: set[str],
          counts: Counter[str]) -> None:
    """Move up to ``n`` candidates whose text is not in ``seen`` to ``chosen``."""
    while n > 0 and (candidate := next(candidates, None)) is not None:
        key = _text_key(candidate.text)
        if key in seen:
            counts["rejected_candidates"] += 1
            continue
        seen.add(key)
        chosen.append(candidate)
        n -= 1


def _negatives_for(record: ImageRecord, domain: _Domain, k: int, attribute_swap: bool,
                   rng: random.Random, counts: Counter[str]) -> list[Negative]:
    """Fill order: shipped up to the class-swap share, generated class swaps up to it,
    attribute swaps up to k, then leftover shipped, then more class swaps."""
    cls, positive = str(record.class_name), record.captions[0]
    valid = _valid_shipped(record, counts)
    seen = {_text_key(positive)} | {_text_key(n.text) for n in valid}
    mentioned, swappable = mentions_class(positive, cls), _swappable(positive, cls)
    counts["records_single_class"] += int(len(domain.classes) == 1)
    counts["records_without_class_mention"] += int(not mentioned)
    counts["records_class_glued"] += int(mentioned and not swappable)
    swappable = swappable and len(domain.classes) > 1
    swaps = _class_swaps(record, domain, rng, counts) if swappable else iter(())
    attributes = _attribute_swaps(record, domain, rng) if attribute_swap else iter(())
    class_share = min(k, (k + 1) // 2 if attribute_swap else k)
    chosen = valid[:class_share]
    _take(swaps, class_share - len(chosen), chosen, seen, counts)
    _take(attributes, k - len(chosen), chosen, seen, counts)
    chosen += valid[class_share:class_share + k - len(chosen)]
    _take(swaps, k - len(chosen), chosen, seen, counts)
    shipped_ids = {id(n) for n in valid}
    generated = [n for n in chosen if id(n) not in shipped_ids]
    counts["kept_shipped"] += len(chosen) - len(generated)
    counts["dropped_surplus"] += len(valid) - (len(chosen) - len(generated))
    for negative in generated:
        is_class_swap = negative.kind is NegativeKind.CLASS_SWAP
        counts["class_swaps" if is_class_swap else "attribute_swaps"] += 1
        same_meta = is_class_swap and negative.class_name in domain.same_meta[cls]
        counts["class_swaps_same_meta_category"] += int(same_meta)
    return chosen


def clean_negatives(
    records: Sequence[ImageRecord],
    classes: Sequence[str],
    k: int = 4,
    meta_category: Mapping[str, str] | None = None,
    seed: int = 0,
    attribute_swap: bool = True,
) -> tuple[list[ImageRecord], NegativeReport]:
    """Give every record ``k`` valid negatives, about half class swaps, half attribute swaps.

    1. Shipped negatives (those on the input records) are dropped when equal to the positive
       (ignoring case, ``_``/space and whitespace runs), mentioning the true class, or
       repeating an earlier one. Valid ones are class swaps: they fill the class-swap share
       (``ceil(k/2)``, or ``k`` when ``attribute_swap=False``) first.
    2. Generated class swaps complete that share: the positive with its class replaced by
       another class of ``classes``, a class of the same meta-category first when
       ``meta_category`` maps both. Impossible when the positive does not mention its class or
       the domain has one class (both counted).
    3. Attribute swaps (``attribute_swap=True``) fill up to ``k``: the positive of a record of
       a different class, that class replaced by this record's class.
    4. When a kind runs out, leftover valid shipped negatives, then more class swaps, fill in;
       a record that still has fewer than ``k`` is counted as short.

    Guarantees: no negative equals the positive; no shipped or class-swap negative mentions the
    true class (attribute swaps carry it by design); a record's negatives are distinct.
    Deterministic: each record draws from ``random.Random(f"{seed}:{image_id}")``, so its
    negatives depend on the domain (classes, donor records) but not on the records' order.

    Args:
        records: FDRD records of one domain (``class_name`` set, first caption = positive).
        classes: the domain's classes; every record's class must be one of them.
        k: negatives per record.
        meta_category: class -> meta-category, to prefer same-meta-category class swaps.
        seed: random seed.
        attribute_swap: also generate attribute swaps; if False, class swaps only.

    Returns:
        New records with ``negatives`` replaced, and a `NegativeReport` (also logged).
    """
    if k < 0:
        raise ValueError(f"k must be >= 0, got {k}")
    if not classes:
        raise ValueError("classes is empty")
    known = set(classes)
    unknown = [r.image_id for r in records if r.class_name not in known]
    if unknown:
        raise ValueError(f"{len(unknown)} record(s) have no class or one outside `classes`, "
                         f"e.g. {', '.join(repr(i) for i in unknown[:5])}")
    domain = _build_domain(records, classes, meta_category)
    counts: Counter[str] = Counter()
    cleaned, short = [], []
    for record in records:
        rng = random.Random(f"{seed}:{record.image_id}")
        negatives = _negatives_for(record, domain, k, attribute_swap, rng, counts)
        if len(negatives) < k:
            short.append(record.image_id)
            counts["missing_negatives"] += k - len(negatives)
        cleaned.append(replace(record, negatives=tuple(negatives)))
    report = NegativeReport(n_records=len(records), k=k, records_short=len(short),
                            short_examples=tuple(short[:5]),
                            **{name: counts[name] for name in _tallied()})
    logger.log(logging.WARNING if short else logging.INFO, "%s", report.summary())
    return cleaned, report

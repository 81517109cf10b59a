"""Negative cleaning: give every FDRD record ``k`` valid hard negatives (see `clean_negatives`).

Class matching (`mentions_class`, what counts as naming a class) is defined in `fdrd`.
"""

from __future__ import annotations

import logging
import random
import re
from collections import Counter
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, fields, replace
from typing import TypeVar

from .fdrd import class_core, class_pattern, display_name, mentions_class
from .records import ImageRecord, Negative, NegativeKind

logger = logging.getLogger(__name__)

_T = TypeVar("_T")


def _text_key(text: str) -> str:
    """Comparison key of captions: case, ``_``/space and whitespace runs are ignored."""
    return " ".join(text.casefold().replace("_", " ").split())


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
    word = re.compile(start + class_core(old) + end, re.IGNORECASE)
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

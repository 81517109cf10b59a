"""The best Recall@1 any retriever can expect on a world split: the ceiling of the caption task.

A downstream caption names its class (which fixes shape, color and pattern) and mentions a
random subset of the per-instance attributes (shade, size, background; position is rendered
but not mentioned by default). Images that agree with everything a caption says are the same
to it, so even a perfect reader of every attribute must break those ties by chance: its
expected R@1 is the mean over queries of 1 / (number of gallery items that match). The
quality suite prints this ceiling beside its measured rows.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

from .captions import DOWNSTREAM_POSITIONS
from .spec import BACKGROUNDS, SHADES, SIZES

# Per-instance attributes and the caption words or phrases that name each value.
INSTANCE_WORDS: dict[str, dict[str, str]] = {
    "shade": {s: s for s in SHADES},
    "size": {s: s for s in SIZES},
    "background": {b: b for b in BACKGROUNDS},
    "position": dict(DOWNSTREAM_POSITIONS),
}


def mentioned(description: str) -> dict[str, str]:
    """The per-instance attribute values a downstream description states, by whole words."""
    text = " " + " ".join(re.findall(r"[a-z]+", description.lower())) + " "
    found = {}
    for attribute, words in INSTANCE_WORDS.items():
        hits = [value for value, phrase in words.items() if f" {phrase} " in text]
        if len(hits) > 1:
            raise ValueError(f"description names several {attribute} values {hits}: {description!r}")
        if hits:
            found[attribute] = hits[0]
    return found


def split_ceiling(domain_dir: str | Path, split: str) -> dict[str, float]:
    """Expected R@1 (%) of a perfect attribute reader with random tie-breaking on one split.

    Reads `{split}.json` (FDRD records) and `attributes.json` (what each image shows), both
    written by `build_world`. i2t: each image against every caption of the split; t2i: each
    caption against every image.
    """
    domain_dir = Path(domain_dir)
    records = json.loads((domain_dir / f"{split}.json").read_text())
    shown = json.loads((domain_dir / "attributes.json").read_text())
    ids = list(records)
    missing = [i for i in ids if i not in shown]
    if missing:
        raise ValueError(f"{domain_dir / 'attributes.json'}: no attributes for {len(missing)} "
                         f"{split} records, e.g. {missing[:3]}")
    said = {}
    for i in ids:
        prefix = f"This is a photo of {records[i]['class_name']}."
        caption = records[i]["positive"]
        if not caption.startswith(prefix):
            raise ValueError(f"{domain_dir / (split + '.json')} [{i}]: positive does not start "
                             f"with {prefix!r}")
        said[i] = (records[i]["class_name"], mentioned(caption[len(prefix):]))

    def matches(image: str, caption: str) -> bool:
        class_name, values = said[caption]
        return shown[image]["class_name"] == class_name and all(
            shown[image][a] == v for a, v in values.items())

    t2i = sum(1 / sum(matches(j, c) for j in ids) for c in ids) / len(ids)
    i2t = sum(1 / sum(matches(i, c) for c in ids) for i in ids) / len(ids)
    return {"i2t_R@1": 100 * i2t, "t2i_R@1": 100 * t2i}


def ceiling(root: str | Path, domains: list[str], split: str = "test") -> dict[str, float]:
    """The ceiling averaged over domains, as the runs average their per-domain recalls."""
    per_domain = [split_ceiling(Path(root).expanduser() / d, split) for d in domains]
    return {k: sum(c[k] for c in per_domain) / len(per_domain) for k in per_domain[0]}

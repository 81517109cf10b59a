"""Caption text for the world: generic pretraining captions and shifted downstream wording.

Templates use a small syntax: `[slot:text]` is kept only when `slot` is mentioned, and
`{name}` fields are filled from the object. Pretraining captions describe attributes with
generic words and never name a downstream class; downstream descriptions reuse the attribute
words but wrap them in a different wording (new nouns, verbs and sentence shapes), behind the
FDRD prefix "This is a photo of {class}.".
"""

from __future__ import annotations

import re

import numpy as np

from .spec import PATTERN_NOUNS, POSITION_PHRASES, ObjectSpec

SLOTS = ("shape", "color", "shade", "pattern", "size", "position", "background")
_INNERMOST = re.compile(r"\[(\w+):([^\[\]]*)\]")  # a group with no group inside

# Pretraining: attribute phrases in several orders, plus a few sentence-style captions so
# that the text tower sees positions beyond the first twenty tokens.
PRETRAIN_TEMPLATES: tuple[str, ...] = (
    "a [size:{size}] [shade:{shade}] [color:{color}] [pattern:{pattern}] {shape} [position:{position}] "
    "[background:on a {background} background]",
    "a [shade:{shade}] [color:{color}] {shape} [pattern:with {pattern_noun}] [size:, {size}] "
    "[position:, {position}] [background:, {background} background]",
    "[background:{background} background ,] a [size:{size}] [pattern:{pattern}] [shade:{shade}] "
    "[color:{color}] {shape} [position:{position}]",
    "a [size:{size}] {shape} [position:{position}] . [color:its color is [shade:{shade}] {color} .] "
    "[pattern:it has {pattern_noun} .] [background:the background is {background} .]",
    "a photo of a [shade:{shade}] [color:{color}] {shape} . [pattern:the {shape} is {pattern} .] "
    "[size:it is {size} .] [position:it is {position} .] [background:{background} background .]",
)

# Downstream wording families: same attribute words, new framing. `{noun}` is the domain's
# word for its objects ("creature", "craft", "bloom").
DOWNSTREAM_TEMPLATES: tuple[tuple[str, ...], ...] = (
    (
        "The [shade:{shade}] [color:{color}] {noun} [size:looks {size}][position: {position}]. "
        "[pattern:Its skin is covered in {pattern_noun}.] [shape:Its outline is a {shape}.] "
        "[background:It rests over a {background} backdrop.]",
        "A [size:{size}] {noun}[color: with a [shade:{shade}] {color} body][pattern: marked by {pattern_noun}]"
        "[position: sits {position}][background:, {background} scenery behind it]. [shape:Its outline is a {shape}.]",
    ),
    (
        "A [size:{size}] [shade:{shade}] [color:{color}] {noun}[pattern: painted with {pattern_noun}]"
        "[position:, parked {position}][background:, with {background} all around]. [shape:The hull forms a {shape}.]",
        "The {noun}[color: is [shade:{shade}] {color}][pattern:, marked with {pattern_noun}]"
        "[size:, and appears {size}][position: {position}][background:, seen against {background}].",
    ),
    (
        "A [shade:{shade}] [color:{color}] {noun}[pattern: showing {pattern_noun}] opens[position: {position}]"
        "[size:; it is {size}][background:; the scene behind is {background}]. "
        "[shape:Each petal group makes a {shape}.]",
        "Here a [size:{size}] {noun}[shape: in the form of a {shape}][color: glows [shade:{shade}] {color}]"
        "[pattern: with {pattern_noun}][background:, growing among {background}][position: {position}].",
    ),
)

# Downstream position phrases: still the pretraining direction words, in new phrasing.
DOWNSTREAM_POSITIONS: dict[str, str] = {
    "center": "near the center",
    "left": "toward the left",
    "right": "toward the right",
    "top": "near the top",
    "bottom": "near the bottom",
}


def fill(template: str, values: dict[str, str], mention: dict[str, bool]) -> str:
    """Fill a template: drop `[slot:...]` groups whose slot is not mentioned, then format.

    Groups may nest ("[color:is [shade:{shade}] {color}]"); they resolve inside-out.
    """
    while True:
        reduced = _INNERMOST.sub(lambda m: m.group(2) if mention.get(m.group(1), True) else "", template)
        if reduced == template:
            break
        template = reduced
    text = template.format(**values)
    text = re.sub(r"\s+", " ", text)
    text = re.sub(r"\s+([,.;])", r"\1", text)  # no space before punctuation
    text = re.sub(r"([,;])\s*([,.;])", r"\2", text)  # a dropped clause leaves no ", ."
    text = re.sub(r"^[\s,.;]+", "", text)
    return text.strip()


def _values(obj: ObjectSpec) -> dict[str, str]:
    return {**obj.as_dict(), "pattern_noun": PATTERN_NOUNS[obj.pattern]}


def draw_mention(rng: np.random.Generator, probs: dict[str, float]) -> dict[str, bool]:
    """Which slots a caption mentions, each independently with its probability (default 1)."""
    return {slot: bool(rng.random() < probs.get(slot, 1.0)) for slot in SLOTS}


def pretrain_caption(obj: ObjectSpec, rng: np.random.Generator, mention_probs: dict[str, float]) -> str:
    """A generic attribute caption, e.g. 'a small dark red striped triangle on the left ...'."""
    template = PRETRAIN_TEMPLATES[rng.integers(len(PRETRAIN_TEMPLATES))]
    mention = draw_mention(rng, mention_probs)
    values = _values(obj)
    values["position"] = POSITION_PHRASES[obj.position]
    if not mention["shape"]:
        values["shape"] = "shape"
    return fill(template, values, mention)


def full_caption(obj: ObjectSpec, mention_position: bool = False) -> str:
    """The first pretraining template with every attribute: the held-out evaluation caption."""
    values = _values(obj)
    values["position"] = POSITION_PHRASES[obj.position]
    return fill(PRETRAIN_TEMPLATES[0], values, {"position": mention_position})


def downstream_description(
    obj: ObjectSpec, noun: str, wording: int, rng: np.random.Generator, mention_probs: dict[str, float]
) -> str:
    """A description in a domain's shifted wording, e.g. 'The dark red creature is covered...'."""
    family = DOWNSTREAM_TEMPLATES[wording % len(DOWNSTREAM_TEMPLATES)]
    template = family[rng.integers(len(family))]
    values = {**_values(obj), "noun": noun, "position": DOWNSTREAM_POSITIONS[obj.position]}
    return fill(template, values, draw_mention(rng, mention_probs))


def positive_caption(class_name: str, description: str) -> str:
    """The FDRD positive: class prefix glued to the description (no space, as in FDRD)."""
    return f"This is a photo of {class_name}.{description}"

"""What the procedural world contains: attribute vocabularies, object specs and domains.

The world is a set of flat, brightly coloured shapes ("objects") with a surface pattern,
drawn on a background. Every attribute value is a caption word (`color`, `shade`, `shape`,
`pattern`, `size`, `background`); `position` is rendered but, by default, never mentioned (a
tiny ViT does not learn it in a few hundred steps; see corpus.py).

Downstream domains imitate fine-grained datasets (pets, aircraft, flowers...): a domain holds
meta-categories (families), each family one body shape; its fine classes (the "breeds") share
the shape and differ by body color and/or surface pattern, like breeds that differ by coat.
Class names are made-up words that the pretraining corpus never uses.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

# Attribute vocabularies. Keys are the caption words; values are render parameters.
COLORS: dict[str, tuple[int, int, int]] = {
    "red": (205, 35, 35),
    "orange": (240, 135, 20),
    "yellow": (235, 210, 30),
    "green": (40, 155, 55),
    "blue": (35, 75, 215),
    "purple": (130, 45, 175),
    "pink": (245, 125, 185),
    "brown": (115, 70, 30),
}
SHADES: tuple[str, ...] = ("light", "dark")
SHAPES: tuple[str, ...] = ("circle", "square", "triangle", "diamond", "hexagon", "star", "cross")
PATTERNS: tuple[str, ...] = ("plain", "striped", "dotted", "checkered", "ringed")
# Noun form of each pattern, used by captions ("with stripes").
PATTERN_NOUNS: dict[str, str] = {
    "plain": "no pattern",
    "striped": "stripes",
    "dotted": "dots",
    "checkered": "checks",
    "ringed": "rings",
}
SIZES: tuple[str, ...] = ("small", "large")
POSITIONS: tuple[str, ...] = ("center", "left", "right", "top", "bottom")
POSITION_PHRASES: dict[str, str] = {
    "center": "in the center",
    "left": "on the left",
    "right": "on the right",
    "top": "at the top",
    "bottom": "at the bottom",
}
BACKGROUNDS: dict[str, tuple[int, int, int]] = {
    "sky": (150, 190, 235),
    "grass": (105, 150, 85),
    "sand": (220, 200, 150),
    "night": (28, 32, 68),
    "stone": (125, 125, 125),
}

ATTRIBUTES: dict[str, tuple[str, ...]] = {
    "shape": SHAPES,
    "color": tuple(COLORS),
    "shade": SHADES,
    "pattern": PATTERNS,
    "size": SIZES,
    "position": POSITIONS,
    "background": tuple(BACKGROUNDS),
}


@dataclass(frozen=True)
class ObjectSpec:
    """The symbolic content of one image; rendering adds continuous jitter on top."""

    shape: str
    color: str
    shade: str
    pattern: str
    size: str
    position: str
    background: str

    def __post_init__(self) -> None:
        for name, values in ATTRIBUTES.items():
            if getattr(self, name) not in values:
                raise ValueError(f"unknown {name} {getattr(self, name)!r}; expected one of {values}")

    def as_dict(self) -> dict[str, str]:
        return {name: getattr(self, name) for name in ATTRIBUTES}


@dataclass(frozen=True)
class RenderStyle:
    """How an image is drawn: the domain shift lives here (backgrounds and noise)."""

    noise_std: float = 3.0  # per-pixel Gaussian noise, in 0-255 units
    gradient: float = 0.0  # amplitude of a linear background gradient (0-255 units)
    texture: float = 0.0  # amplitude of low-frequency background blobs (0-255 units)
    blur: float = 0.0  # Gaussian blur radius in pixels, applied after downsampling
    max_rotation: float = 15.0  # degrees of random rotation of the object
    tint: tuple[float, float, float] = (1.0, 1.0, 1.0)  # per-channel gain (a white-balance cast)

    def __post_init__(self) -> None:
        if min(self.noise_std, self.gradient, self.texture, self.blur, self.max_rotation, *self.tint) < 0:
            raise ValueError("RenderStyle fields must be non-negative")


PRETRAIN_STYLE = RenderStyle()


@dataclass(frozen=True)
class FineClass:
    """A downstream subcategory: a made-up name bound to (shape, color, pattern)."""

    name: str
    meta: str  # meta-category (family) name
    shape: str
    color: str
    pattern: str


@dataclass(frozen=True)
class DomainDef:
    """A downstream domain before names are drawn: its families and its shift."""

    name: str
    noun: str  # what the domain's captions call an object ("creature", "craft"...)
    shapes: tuple[str, ...]  # one family per shape
    style: RenderStyle
    wording: int  # index of the description template family (see corpus.py)
    name_style: str = "word"  # "word" ("Varlin"), "model" ("Tesko Mk2"), "pair" ("Dreska Vol")
    backgrounds: tuple[str, ...] = tuple(BACKGROUNDS)


# Four fine-grained domains, each with its own families, wording and image shift. Pretraining
# draws flat backgrounds; every domain adds a textured background plus its own gradient,
# noise, blur and color cast. Measured on the default world: generic captions lose about a
# third of their zero-shot R@1 on these images, and learned visual prompts win part of it back.
DOMAINS: tuple[DomainDef, ...] = (
    DomainDef("critters", "creature", ("circle", "triangle", "square", "star"),
              RenderStyle(noise_std=8.0, texture=28.0, tint=(1.08, 1.0, 0.86)), wording=0),
    DomainDef("craft", "craft", ("diamond", "cross", "hexagon", "square"),
              RenderStyle(noise_std=6.0, gradient=60.0, texture=26.0, blur=0.6, tint=(0.92, 0.97, 1.08)),
              wording=1, name_style="model"),
    DomainDef("blooms", "bloom", ("star", "hexagon", "circle", "diamond"),
              RenderStyle(noise_std=10.0, texture=36.0, tint=(0.9, 1.0, 1.1)), wording=2, name_style="pair"),
    DomainDef("shells", "shell", ("triangle", "diamond", "star", "cross"),
              RenderStyle(noise_std=12.0, gradient=40.0, texture=30.0, tint=(1.0, 0.9, 0.9)), wording=0),
)
DOMAIN_NAMES: tuple[str, ...] = tuple(d.name for d in DOMAINS)


@dataclass(frozen=True)
class Domain:
    """A built domain: its definition and its fine classes (with names)."""

    definition: DomainDef
    classes: tuple[FineClass, ...] = field(default_factory=tuple)

    @property
    def name(self) -> str:
        return self.definition.name

    def siblings(self, fine: FineClass) -> list[FineClass]:
        return [c for c in self.classes if c.meta == fine.meta and c.name != fine.name]


_ONSETS = ("b", "d", "f", "g", "k", "l", "m", "n", "p", "r", "s", "t", "v", "z",
           "br", "dr", "gr", "kr", "pl", "tr", "sk", "st", "th", "vr")
_VOWELS = ("a", "e", "i", "o", "u", "ai", "ou")
_CODAS = ("", "", "", "n", "r", "l", "s", "k", "m", "sh")


def pseudo_word(rng: np.random.Generator, syllables: int = 2) -> str:
    """A pronounceable made-up word, e.g. 'Varlin'."""
    parts = []
    for i in range(syllables):
        coda = _CODAS[rng.integers(len(_CODAS))] if i == syllables - 1 else ""
        parts.append(_ONSETS[rng.integers(len(_ONSETS))] + _VOWELS[rng.integers(len(_VOWELS))] + coda)
    return "".join(parts).capitalize()


def class_name(rng: np.random.Generator, style: str) -> str:
    """A made-up class name in one of the domain naming styles."""
    if style == "word":
        return pseudo_word(rng, int(rng.integers(2, 4)))
    if style == "model":
        return f"{pseudo_word(rng, 2)} Mk{int(rng.integers(2, 10))}"
    if style == "pair":
        return f"{pseudo_word(rng, 2)} {pseudo_word(rng, 1)}"
    raise ValueError(f"unknown name style {style!r}")


def make_domain(
    definition: DomainDef,
    rng: np.random.Generator,
    colors_per_family: int = 2,
    patterns_per_family: int = 2,
    is_name_ok=lambda name: True,
) -> Domain:
    """Draw the fine classes of one domain.

    Each family (one per shape) gets `colors_per_family x patterns_per_family` classes, the
    cross product of colors and patterns drawn for it, so siblings differ by one attribute.
    `is_name_ok` rejects names (e.g. ones that share tokens with the pretraining corpus).
    """
    used: set[str] = set()

    def fresh(style: str) -> str:
        while True:
            name = class_name(rng, style)
            low = name.lower()
            clash = any(low in u or u in low for u in used)
            if not clash and is_name_ok(name):
                used.add(low)
                return name

    classes = []
    for shape in definition.shapes:
        meta = pseudo_word(rng, 2).lower() + "id"
        while meta in used or not is_name_ok(meta):
            meta = pseudo_word(rng, 2).lower() + "id"
        used.add(meta)
        colors = rng.choice(list(COLORS), size=colors_per_family, replace=False)
        patterns = rng.choice(PATTERNS, size=patterns_per_family, replace=False)
        for color in colors:
            for pattern in patterns:
                classes.append(FineClass(fresh(definition.name_style), meta, shape, str(color), str(pattern)))
    return Domain(definition, tuple(classes))


def sample_object(rng: np.random.Generator, backgrounds: tuple[str, ...] = tuple(BACKGROUNDS)) -> ObjectSpec:
    """An object with every attribute drawn uniformly (the pretraining distribution)."""
    pick = lambda values: str(values[rng.integers(len(values))])
    return ObjectSpec(
        shape=pick(SHAPES), color=pick(tuple(COLORS)), shade=pick(SHADES), pattern=pick(PATTERNS),
        size=pick(SIZES), position=pick(POSITIONS), background=pick(backgrounds),
    )


def sample_class_object(fine: FineClass, rng: np.random.Generator, backgrounds: tuple[str, ...]) -> ObjectSpec:
    """An instance of a fine class: class attributes fixed, nuisance attributes drawn."""
    pick = lambda values: str(values[rng.integers(len(values))])
    return ObjectSpec(
        shape=fine.shape, color=fine.color, shade=pick(SHADES), pattern=fine.pattern,
        size=pick(SIZES), position=pick(POSITIONS), background=pick(backgrounds),
    )

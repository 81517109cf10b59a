"""Prompt configuration: what is learned, how long and how deep."""
from __future__ import annotations

import dataclasses
import enum
import json
import math
from dataclasses import dataclass, field
from typing import Any, Optional


class StrEnum(str, enum.Enum):
    """A mode: a `str` that compares, prints and serialises as its value.

    Members are named by their values, because OmegaConf (and so Hydra) looks a config value up
    by member name: a wrong value then fails when the config is composed, listing the names."""

    def __str__(self) -> str:
        return str.__str__(self)

    __format__ = str.__format__


class SubcategoryQuery(StrEnum):
    """What the subcategory-sensitive prompt pool is keyed on (no label needed at inference)."""

    feature = "feature"  # the frozen CLIP feature of the caption (one extra frozen text pass)
    tokens = "tokens"  # the mean frozen token embedding of the caption (free)
    # upper-case aliases, the Python spelling
    FEATURE = "feature"
    TOKENS = "tokens"


# the attention projections CLIP-LoRA can update: query, key, value (open_clip's in_proj) and
# output (out_proj); and the MLP's first (W -> H: open_clip's c_fc, timm's fc1) and second
# (H -> W: c_proj, fc2) linear layer
MLP_TARGETS = ("mlp_in", "mlp_out")
LORA_TARGETS = ("q", "k", "v", "o", *MLP_TARGETS)


@dataclass
class PromptConfig:
    """The learned prompt vectors of a `DualPromptCLIP`; a length of 0 switches a group off.

    Text layout (CoOp "end" layout): ``[SOS][attribute][subcategory][caption tokens][EOT]``.
    """

    # Attribute-level text vectors, shared by every caption.
    attribute_length: int = 4
    # Words whose token embeddings initialise the attribute vectors (CoOp); None: N(0, 0.02).
    # Fewer tokens than `attribute_length`: the rest start random; more: the first ones are
    # used. Ignored when attribute_length is 0.
    attribute_init: Optional[str] = "a photo of a"
    # Subcategory-sensitive text vectors: a pool of `subcategory_pool_size` prompt sets with
    # learnable keys, mixed per caption by key-query similarity (see `SubcategoryQuery`).
    subcategory_length: int = 2
    subcategory_pool_size: int = 8
    subcategory_query: SubcategoryQuery = SubcategoryQuery.FEATURE
    # The frozen text layers that compute a FEATURE query, as a fraction of the tower's
    # (ceil(fraction x layers)): 1.0 is the CLIP text feature, a second text pass per caption;
    # less reads the end token's state after those layers (through ln_final and the
    # projection), that fraction of the pass.
    subcategory_query_depth_fraction: float = 1.0
    subcategory_temperature: float = 0.1
    # Layers of the text tower whose input gets fresh attribute vectors (1 = input layer only).
    text_depth: int = 1
    # Visual prompt tokens appended to the ViT token sequence.
    visual_length: int = 4
    # Layers of the image tower whose input gets fresh visual tokens (1 = shallow, VPT-deep > 1).
    visual_depth: int = 1
    # Depths as a fraction of the tower's layers, so that one preset fits any tower: when set,
    # it replaces text_depth / visual_depth by ceil(fraction x layers) when the prompts are
    # built on a model (`for_model`; 0.75 is 9 of ViT-B's 12 and 3 of the world CLIP's 3,
    # 1.0 every layer; coupled, the visual depth is capped at the text depth). Setting both a
    # fraction and a depth other than 1 is an error. Prompt files record the resulting depths.
    text_depth_fraction: Optional[float] = None
    visual_depth_fraction: Optional[float] = None
    # Generate the visual tokens from the attribute vectors by a linear map per layer (MaPLe).
    # Needs visual_length == attribute_length and visual_depth <= text_depth.
    coupled: bool = False
    # Std of the normal init of vectors that are not initialised from words.
    init_std: float = 0.02
    # Class-specific attribute vectors (CoOp's CSC): one set per class of the training data,
    # chosen per caption by the class name it contains (token match, longest name first);
    # captions naming none of these classes get the mean set. Empty: shared vectors.
    class_names: list[str] = field(default_factory=list)
    # CLIP-Adapter (Gao et al. 2024): a residual bottleneck MLP on the output features,
    # f <- ratio * A(f) + (1 - ratio) * f, one per tower; a ratio of 0 switches it off.
    image_adapter_ratio: float = 0.0
    text_adapter_ratio: float = 0.0
    adapter_reduction: int = 4  # bottleneck width = feature dim / reduction
    # CLIP-LoRA (Zanella & Ben Ayed 2024): a low-rank update W + alpha / sqrt(rank) * B A of
    # the weights `lora_targets` (of the attention's q, k, v, o and the MLP's mlp_in, mlp_out;
    # CLIP-LoRA's are q, k, v) in every layer of the towers
    # `lora_towers` (both, as CLIP-LoRA); B starts at zero, so training starts from the frozen
    # CLIP. A rank of 0 switches it off.
    lora_rank: int = 0
    lora_alpha: float = 1.0
    lora_targets: list[str] = field(default_factory=lambda: ["q", "k", "v"])
    lora_towers: list[str] = field(default_factory=lambda: ["text", "image"])
    # dropout on the input of each LoRA update while it trains (CLIP-LoRA's 0.25); blocks that
    # take the low-rank path only (open_clip's own; timm / EVA blocks run without it, logged)
    lora_dropout: float = 0.0
    # LoRA on the text tower's token embedding (`prompts.TokenLoRA`): learns the embeddings of
    # the domain's words, as full fine-tuning does, in a rank-`token_lora_rank` update scaled
    # by token_lora_alpha / rank; it trains with the LoRA tensors (`optim.lora_lr_scale`).
    # A rank of 0 switches it off.
    token_lora_rank: int = 0
    token_lora_alpha: float = 1.0

    def __post_init__(self) -> None:
        self.subcategory_query = SubcategoryQuery(self.subcategory_query)
        for name in ("attribute_length", "subcategory_length", "visual_length"):
            _check(getattr(self, name) >= 0, name, f"must be >= 0, got {getattr(self, name)}")
        for name in ("text_depth", "visual_depth"):
            _check(getattr(self, name) >= 1, name, f"must be >= 1 (1 = input layer only), "
                                                   f"got {getattr(self, name)}")
            fraction = getattr(self, f"{name}_fraction")
            _check(fraction is None or 0.0 < fraction <= 1.0, f"{name}_fraction",
                   f"must be null or in (0, 1], got {fraction}")
            _check(fraction is None or getattr(self, name) == 1, f"{name}_fraction",
                   f"is {fraction} and {name} is {getattr(self, name)}: set one (the other to "
                   f"null / 1), e.g. {name}_fraction=null to use {name}")
        if self.subcategory_length > 0:
            _check(self.subcategory_pool_size >= 1, "subcategory_pool_size",
                   f"must be >= 1 when subcategory_length > 0, got {self.subcategory_pool_size}")
        _check(0.0 < self.subcategory_query_depth_fraction <= 1.0,
               "subcategory_query_depth_fraction",
               f"must be in (0, 1], got {self.subcategory_query_depth_fraction}")
        _check(self.subcategory_temperature > 0, "subcategory_temperature",
               f"must be > 0, got {self.subcategory_temperature}")
        _check(self.init_std > 0, "init_std", f"must be > 0, got {self.init_std}")
        if self.attribute_init is not None:
            _check(bool(self.attribute_init.strip()), "attribute_init",
                   "must be None or non-empty words")
        for name in ("image_adapter_ratio", "text_adapter_ratio"):
            _check(0.0 <= getattr(self, name) <= 1.0, name,
                   f"must be in [0, 1], got {getattr(self, name)}")
        _check(self.adapter_reduction >= 1, "adapter_reduction",
               f"must be >= 1, got {self.adapter_reduction}")
        self.lora_targets = list(self.lora_targets)
        _check(self.lora_rank >= 0, "lora_rank", f"must be >= 0, got {self.lora_rank}")
        if self.lora_rank:
            unknown = sorted(set(self.lora_targets) - set(LORA_TARGETS))
            _check(bool(self.lora_targets) and not unknown, "lora_targets",
                   f"must be a non-empty subset of {list(LORA_TARGETS)}, got {self.lora_targets}")
        _check(0.0 <= self.lora_dropout < 1.0, "lora_dropout",
               f"must be in [0, 1), got {self.lora_dropout}")
        self.lora_towers = list(self.lora_towers)
        if self.lora_rank:
            _check(bool(self.lora_towers) and set(self.lora_towers) <= {"text", "image"},
                   "lora_towers", f"must be a non-empty subset of ['text', 'image'], got "
                                  f"{self.lora_towers}")
        _check(self.token_lora_rank >= 0, "token_lora_rank",
               f"must be >= 0, got {self.token_lora_rank}")
        _check(self.token_lora_alpha > 0, "token_lora_alpha",
               f"must be > 0, got {self.token_lora_alpha}")
        self.class_names = list(self.class_names)
        if self.class_names:
            _check(self.attribute_length > 0, "class_names",
                   "class-specific vectors need attribute_length > 0")
            _check(not self.coupled, "class_names", "class-specific vectors cannot be coupled")
            _check(all(isinstance(c, str) and c.strip() for c in self.class_names),
                   "class_names", "must be non-empty strings")
            _check(len(set(self.class_names)) == len(self.class_names), "class_names",
                   "has duplicates")
        if self.coupled:
            _check(self.visual_length > 0 and self.attribute_length > 0, "coupled",
                   "needs attribute_length > 0 and visual_length > 0")
            _check(self.visual_length == self.attribute_length, "visual_length",
                   f"must equal attribute_length ({self.attribute_length}) when coupled, "
                   f"got {self.visual_length}")
            _check(self.visual_depth <= self.text_depth, "visual_depth",
                   f"must be <= text_depth ({self.text_depth}) when coupled, "
                   f"got {self.visual_depth}")

    def query_layers(self, text_layers: int) -> int:
        """The frozen text layers that compute a FEATURE pool query in a tower of this size."""
        return max(1, math.ceil(self.subcategory_query_depth_fraction * text_layers - 1e-9))

    @property
    def text_length(self) -> int:
        """Number of prompt positions inserted into every caption."""
        return self.attribute_length + self.subcategory_length

    def for_model(self, text_layers: int, vision_layers: int) -> "PromptConfig":
        """This config with depth fractions turned into depths for towers of these sizes."""
        depths = {}
        for name, layers in (("text_depth", text_layers), ("visual_depth", vision_layers)):
            fraction = getattr(self, f"{name}_fraction")
            if fraction is not None:
                depths[name] = max(1, math.ceil(fraction * layers - 1e-9))
                depths[f"{name}_fraction"] = None
        if self.coupled and "visual_depth" in depths:  # MaPLe: a visual layer per text one
            depths["visual_depth"] = min(depths["visual_depth"],
                                         depths.get("text_depth", self.text_depth))
        return dataclasses.replace(self, **depths) if depths else self

    def check_model(self, text_layers: int, vision_layers: int, context_length: int) -> None:
        """Validate against a concrete model; raises ValueError naming the field."""
        if self.attribute_length > 0:
            _check(self.text_depth <= text_layers, "text_depth",
                   f"is {self.text_depth} but the text tower has {text_layers} layers")
        if self.visual_length > 0:
            _check(self.visual_depth <= vision_layers, "visual_depth",
                   f"is {self.visual_depth} but the image tower has {vision_layers} layers")
        # SOS + prompts + at least one caption token + EOT must fit in the window.
        room = context_length - 2 - self.text_length
        _check(room >= 1, "attribute_length/subcategory_length",
               f"{self.text_length} text prompt vectors leave no room for a caption in the "
               f"context window of {context_length} tokens (at most {context_length - 3})")

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["subcategory_query"] = self.subcategory_query.value
        return d

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=True)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "PromptConfig":
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise ValueError(f"PromptConfig: unknown field(s) {unknown}; known: {sorted(known)}")
        return cls(**d)


def _check(ok: bool, field: str, message: str) -> None:
    if not ok:
        raise ValueError(f"PromptConfig.{field} {message}")

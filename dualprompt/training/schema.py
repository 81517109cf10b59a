"""Structured-config schemas: the YAML in dualprompt/conf is validated against these, so a
misspelled key or a wrong type fails when Hydra composes the config, not an hour into a run."""
from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from pathlib import Path
from dataclasses import dataclass, field
from typing import Any, Optional

from hydra.core.config_store import ConfigStore
from omegaconf import MISSING

from ..config import PromptConfig, StrEnum
from ..data.embed_inputs import InputFormat, Modality
from ..data.records import CaptionFormat, KarpathySplit


class Trains(StrEnum):
    """What a method trains."""

    prompts = "prompts"  # prompt vectors / adapters on the frozen CLIP
    all = "all"  # every CLIP weight (full fine-tuning)
    none = "none"  # nothing: zero-shot


class LossKind(StrEnum):
    """The in-batch contrastive loss (and the form of the category-aware negatives)."""

    auto = "auto"  # sigmoid for a model with a logit bias (SigLIP), else infonce
    infonce = "infonce"  # CLIP's symmetric softmax cross-entropy
    sigmoid = "sigmoid"  # SigLIP's pairwise sigmoid loss, with the model's logit bias


class CategoryLevel(StrEnum):
    """What "category" means for the category-aware negatives."""

    fine = "fine"  # the class
    meta = "meta"  # the meta-category (DomainConfig.meta_categories)


class Distance(StrEnum):
    """How far learned features are from the frozen CLIP's (`losses.feature_consistency`)."""

    cosine = "cosine"  # 1 - cosine (KgCoOp)
    l1 = "l1"  # mean absolute difference (PromptSRC)


class DataType(StrEnum):
    """The format of `dataset.train_data` / `val_data` / `test_data`."""

    auto = "auto"  # by suffix: .csv / .tsv -> csv, .jsonl -> jsonl, .tar -> webdataset
    csv = "csv"
    jsonl = "jsonl"
    webdataset = "webdataset"  # shards, brace-expanded: data/{00000..00099}.tar


class Optimizer(StrEnum):
    sgd = "sgd"
    adamw = "adamw"


class LoggerKind(StrEnum):
    csv = "csv"
    wandb = "wandb"
    none = "none"


class Split(StrEnum):
    test = "test"
    val = "val"


class Task(StrEnum):
    """What `python -m dualprompt.evaluate` measures."""

    retrieval = "retrieval"  # Recall@K both ways, mean and median rank
    classification = "classification"  # acc1 / acc5 / mean per-class recall by class names
    attributes = "attributes"  # the closest value per attribute: accuracy, macro-F1


class OfflineAsset(StrEnum):
    """What `dataset.generate` / `model.pretrain` can build on first use."""

    world = "world"  # the procedural world / its small CLIP (dualprompt.world)


class WeightPrecision(StrEnum):
    """open_clip's `precision` of the base CLIP's weights."""

    fp32 = "fp32"
    fp16 = "fp16"
    bf16 = "bf16"
    pure_fp16 = "pure_fp16"
    pure_bf16 = "pure_bf16"


# Lightning's precision names are not Python identifiers ("bf16-mixed"): the functional API
# names the members by them, which is what OmegaConf validates against.
TrainerPrecision = StrEnum("TrainerPrecision", {name: name for name in (
    "32-true", "32", "bf16-mixed", "16-mixed", "bf16-true", "16-true", "64-true")})


@dataclass
class WorldArgs:
    """Fields of `dualprompt.world.WorldConfig` to set; null keeps the world's default."""

    seed: Optional[int] = None
    image_size: Optional[int] = None
    domains: Optional[list[str]] = None
    colors_per_family: Optional[int] = None
    patterns_per_family: Optional[int] = None
    train_per_domain: Optional[int] = None
    val_per_domain: Optional[int] = None
    test_per_domain: Optional[int] = None
    num_negatives: Optional[int] = None
    mention_probs: Optional[dict[str, float]] = None


@dataclass
class PretrainArgs:
    """Fields of `dualprompt.world.PretrainConfig` to set; null keeps its default."""

    steps: Optional[int] = None
    batch_size: Optional[int] = None
    lr: Optional[float] = None
    weight_decay: Optional[float] = None
    warmup_steps: Optional[int] = None
    seed: Optional[int] = None
    num_threads: Optional[int] = None
    eval_pairs: Optional[int] = None
    probe_images: Optional[int] = None
    save_fp16: Optional[bool] = None
    log_every: Optional[int] = None


@dataclass
class DomainConfig:
    """One retrieval domain: caption files (relative to the dataset root) and its images."""

    train: Optional[str] = None
    val: Optional[str] = None  # None: `val_fraction` of the train images are held out
    test: Optional[str] = None
    images: str = "."  # image folder, relative to the dataset root
    format: CaptionFormat = CaptionFormat.fdrd
    meta_categories: Optional[str] = None  # JSON {class: meta-category}, relative to the root
    note: Optional[str] = None  # said when a split the run needs has no file (e.g. no release)
    # JSON {image id: {attribute: value}} for `evaluate task=attributes`, relative to the
    # caption folder (the world writes <domain>/attributes.json)
    attributes: Optional[str] = None


@dataclass
class NegativesConfig:
    k: int = 4  # negatives per image
    attribute_swap: bool = True  # also generate "same class, other description" negatives


@dataclass
class DatasetConfig:
    name: str = MISSING
    root: str = MISSING  # the images' folder (FDRD: CoOp's $DATA); caption files too by default
    # the folder holding the caption files, flat or with train/ and test/ inside (FDRD: the
    # release's FDRD/ folder); null: `root`
    captions: Optional[str] = None
    # name -> DomainConfig. Typed as Any so that a whole domain can be added on the command line
    # (+dataset.domains.mine={train: ..., test: ..., images: ...}), which OmegaConf refuses for
    # a dict of dataclasses; every entry is checked against DomainConfig in __post_init__.
    domains: dict[str, Any] = field(default_factory=dict)
    train_domains: list[str] = field(default_factory=list)
    test_domains: list[str] = field(default_factory=list)  # each evaluated on its own gallery
    val_fraction: float = 0.1
    # few-shot: K training images per class (after the validation split), seeded by `seed`
    # only, so that every method trains on the same images at a seed; null: all of them
    shots: Optional[int] = None
    # with `shots`: validation keeps min(K, 4) images a class, as CoOp's few-shot splits;
    # false keeps the whole validation split (a steadier signal for choosing a recipe)
    few_shot_val: bool = True
    # evaluate task=attributes: a prompt per attribute, "{}" the value; others get
    # "a photo of something {}."
    attribute_templates: dict[str, str] = field(default_factory=dict)
    # seen/unseen subcategories (CoCoOp's base-to-novel): train on the first half of each
    # domain's classes (sorted by name), test on a base and a novel gallery per domain
    base_to_novel: bool = False
    skip_bad_images: bool = False  # count, log and skip missing/unreadable images
    negatives: NegativesConfig = field(default_factory=NegativesConfig)
    generate: Optional[OfflineAsset] = None  # world: build the offline world if missing
    generate_args: WorldArgs = field(default_factory=lambda: WorldArgs())
    # Your own catalogue (dataset=custom): one domain named `name` from these files, which
    # replace `domains`, `train_domains` and `test_domains`.
    train_data: Optional[str] = None  # a CSV/TSV or JSONL file, or WebDataset shards
    val_data: Optional[str] = None  # null: `val_fraction` of the train images, seeded
    test_data: Optional[str] = None
    type: DataType = DataType.auto
    img_key: Optional[str] = None  # null: filepath (CSV, as open_clip) / file_name (JSONL)
    caption_key: Optional[str] = None  # null: title (CSV) / text (JSONL) / txt (shards)
    # a class column (shards: a member, or a field of the json member): class-swap and
    # attribute-swap negatives
    class_key: Optional[str] = None
    separator: Optional[str] = None  # CSV: null sniffs tab or comma from the header
    image_root: Optional[str] = None  # relative image paths; null: the data file's folder

    def __post_init__(self) -> None:
        if self.shots is not None and self.shots < 1:
            raise ValueError(f"dataset.shots must be null or >= 1, got {self.shots}")
        self.domains = {name: as_domain(name, d) for name, d in self.domains.items()}
        if self.train_data or self.test_data:
            self._own_data_as_a_domain()

    def _own_data_as_a_domain(self) -> None:
        files = [_absolute(f) for f in (self.train_data, self.val_data, self.test_data)]
        first = Path((files[0] or files[2]).split("::")[0])
        kind = self.type if self.type != DataType.auto else _type_by_suffix(first)
        root = Path(self.image_root).expanduser().absolute() if self.image_root else first.parent
        self.root = str(root)
        self.domains = {self.name: DomainConfig(
            train=files[0], val=files[1], test=files[2], images=".", format=CaptionFormat(kind))}
        self.train_domains = [self.name] if self.train_data else []
        self.test_domains = [self.name] if self.test_data else []


def _absolute(spec: Optional[str]) -> Optional[str]:
    """A data file (or `::`-separated shard specs) as absolute paths, from the working directory
    the command ran in; URLs are kept."""
    if not spec:
        return spec
    return "::".join(p if "://" in p else str(Path(p).expanduser().absolute())
                     for p in spec.split("::"))


def _type_by_suffix(path: Path) -> DataType:
    suffix = path.suffix.lower()
    if suffix == ".tar":
        return DataType.webdataset
    if suffix in (".csv", ".tsv"):
        return DataType.csv
    if suffix == ".jsonl":
        return DataType.jsonl
    raise ValueError(f"{path}: cannot tell the format from the suffix {suffix!r}; set "
                     f"dataset.type to one of {[t.value for t in DataType if t != DataType.auto]}")


def as_domain(name: str, value: Any) -> DomainConfig:
    """A `DomainConfig` from a config mapping; a wrong key or value names the domain."""
    if isinstance(value, DomainConfig):
        return value
    if not isinstance(value, Mapping):
        raise ValueError(f"dataset.domains.{name} must be a mapping of DomainConfig fields, "
                         f"got {value!r}")
    known = [f.name for f in dataclasses.fields(DomainConfig)]
    unknown = sorted(set(value) - set(known))
    if unknown:
        raise ValueError(f"dataset.domains.{name}: unknown key(s) {unknown}; known: {known}")
    values = dict(value)
    if "format" in values:
        try:
            values["format"] = CaptionFormat(values["format"])
        except ValueError:
            allowed = [f.value for f in CaptionFormat]
            raise ValueError(f"dataset.domains.{name}.format must be one of {allowed}, got "
                             f"{values['format']!r}") from None
    return DomainConfig(**values)


@dataclass
class ModelConfig:
    name: str = "ViT-B-32"
    pretrained: Optional[str] = "openai"  # tag, local weights file, local-dir:/path, or null
    config_file: Optional[str] = None  # extra open_clip model-config JSON (custom architecture)
    precision: WeightPrecision = WeightPrecision.fp32  # weights of the base CLIP
    cache_dir: Optional[str] = None
    trim_context: bool = True  # drop text columns after the batch's longest caption (exact)
    length_buckets: int = 4  # with trim_context: encode captions in groups of similar length
    pretrain: Optional[OfflineAsset] = None  # world: pretrain the world's small CLIP if missing
    pretrain_args: PretrainArgs = field(default_factory=lambda: PretrainArgs())


@dataclass
class LossConfig:
    kind: LossKind = LossKind.auto  # infonce | sigmoid | auto (from the model, see LossKind)
    contrastive: bool = True  # the in-batch contrastive loss (L_con)
    category_negatives: bool = True  # category-aware hard negatives (L_cate)
    category_weight: float = 1.0  # lambda of L_cate
    alpha: float = 0.5  # negatives of the image's category weigh 1 + alpha
    category_level: CategoryLevel = CategoryLevel.fine
    reweighting: bool = True  # dynamic token re-weighting of the positive captions
    reweighting_strength: float = 1.0
    # with re-weighting: weight each negative caption by its image too (as its positive is), so
    # the weighted positive of L_con also serves L_cate; false: L_cate compares an unweighted
    # copy of the positive with unweighted negatives (one more text pass per step)
    reweight_negatives: bool = False
    # consistency with the frozen CLIP (0: off): the prompted caption / image features against
    # the frozen ones (KgCoOp: text 8.0, cosine; PromptSRC: text 25, image 10, l1), and the
    # batch's image->text logits against the frozen logits (PromptSRC: 1.0, KL)
    text_consistency: float = 0.0
    image_consistency: float = 0.0
    logit_consistency: float = 0.0
    consistency_distance: Distance = Distance.cosine


@dataclass
class MethodConfig:
    """What a run trains; the presets in conf/method also pick the prompt and loss groups."""

    name: str = "dualprompt"  # the row label in results.json and the quality tables
    trains: Trains = Trains.prompts
    class_specific: bool = False  # CoOp's CSC: attribute vectors per class of the train split
    # an image tower without transformer blocks (ResNet, ConvNeXt) trains the text prompts
    # alone, with one log line, instead of stopping (ours: true; VPT, MaPLe: false)
    visual_optional: bool = False
    # PromptSRC's Gaussian prompt aggregation: export the Gaussian-weighted average of the
    # epochs (mean and std as fractions of trainer.max_epochs) instead of the best epoch
    gpa_mean: Optional[float] = None  # null: off (the best epoch by `monitor`)
    gpa_std: float = 0.05


@dataclass
class OptimConfig:
    name: Optimizer = Optimizer.sgd
    lr: float = 0.002
    weight_decay: float = 0.0
    momentum: float = 0.9
    betas: list[float] = field(default_factory=lambda: [0.9, 0.999])
    warmup_steps: int = 0
    warmup_lr: float = 1e-5  # constant lr during warm-up (CoOp), then cosine from `lr`
    min_lr: float = 0.0
    lora_lr_scale: float = 1.0  # the LoRA tensors train at lr x this, on the same schedule


@dataclass
class TrainerConfig:
    max_epochs: int = 5
    accelerator: str = "auto"
    devices: Any = "auto"
    num_nodes: int = 1
    strategy: str = "auto"
    precision: TrainerPrecision = TrainerPrecision["32-true"]
    gradient_clip_val: Optional[float] = None
    log_every_n_steps: int = 10
    deterministic: bool = False
    check_val_every_n_epoch: int = 1
    limit_train_batches: Optional[float] = None
    limit_val_batches: Optional[float] = None
    fast_dev_run: bool = False
    enable_progress_bar: bool = True
    early_stopping_patience: Optional[int] = None  # epochs without val improvement; null: off


@dataclass
class LoggerConfig:
    kind: LoggerKind = LoggerKind.csv
    project: str = "dualprompt"
    entity: Optional[str] = None
    offline: bool = False  # wandb: write a local run folder, `wandb sync` later
    tags: list[str] = field(default_factory=list)
    log_prompts: bool = True  # wandb: upload the best prompt file as an artifact


@dataclass
class DataLoaderConfig:
    batch_size: int = 32
    eval_batch_size: int = 128
    num_workers: int = 2


@dataclass
class TrainConfig:
    dataset: DatasetConfig = MISSING
    model: ModelConfig = field(default_factory=ModelConfig)
    method: MethodConfig = field(default_factory=MethodConfig)
    prompt: PromptConfig = field(default_factory=PromptConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    trainer: TrainerConfig = field(default_factory=TrainerConfig)
    logger: LoggerConfig = field(default_factory=LoggerConfig)
    data: DataLoaderConfig = field(default_factory=DataLoaderConfig)
    seed: int = 0
    ckpt_path: Optional[str] = None  # "last" resumes from the run folder's last checkpoint
    monitor: str = "val/AVG/rsum"  # model selection and early stopping, never on test
    eval_zero_shot: bool = True  # also test the frozen CLIP, for a before/after table
    test: bool = True
    # keep each training pair's frozen quantities after their first pass (PromptRetrievalModule's
    # `cache_frozen`); exact to float rounding, so a resumed run, which refills the cache in
    # other batches, ends like the uninterrupted one to rounding (bitwise with false)
    cache_frozen: bool = True


@dataclass
class EvaluateConfig:
    dataset: DatasetConfig = MISSING
    model: ModelConfig = field(default_factory=ModelConfig)
    prompts: Optional[str] = None  # a prompt file; null: zero-shot CLIP
    split: Split = Split.test
    task: Task = Task.retrieval
    trainer: TrainerConfig = field(default_factory=TrainerConfig)
    data: DataLoaderConfig = field(default_factory=DataLoaderConfig)
    output: Optional[str] = None  # results JSON path; default: the run folder


@dataclass
class EmbedConfig:
    input: str = MISSING  # a folder of images, a caption JSON (FDRD / Karpathy) or a .txt file
    format: InputFormat = InputFormat.auto
    image_root: Optional[str] = None  # caption JSONs: image folder; default the JSON's folder
    split: Optional[KarpathySplit] = None  # Karpathy files: one split; null: all of them
    skip_missing_images: bool = False  # caption JSONs: leave out images not found (counted)
    modalities: list[Modality] = field(default_factory=lambda: [Modality.image, Modality.text])
    model: ModelConfig = field(default_factory=ModelConfig)
    prompts: Optional[str] = None  # a prompt file; null: zero-shot CLIP
    faiss: bool = False  # also write image.faiss / text.faiss (IndexFlatIP), needs faiss-cpu
    trainer: TrainerConfig = field(default_factory=TrainerConfig)
    data: DataLoaderConfig = field(default_factory=DataLoaderConfig)  # eval_batch_size is used
    output: Optional[str] = None  # output folder; default: the run folder


def register_configs() -> None:
    """Register the schemas with Hydra's ConfigStore (called by the CLIs, not on import).

    The primary configs list them first in their defaults; every group (dataset=, model=,
    ...) is then typed by its field in `TrainConfig` / `EvaluateConfig` / `EmbedConfig`."""
    cs = ConfigStore.instance()
    cs.store(name="train_schema", node=TrainConfig)
    cs.store(name="evaluate_schema", node=EvaluateConfig)
    cs.store(name="embed_schema", node=EmbedConfig)

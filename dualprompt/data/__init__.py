"""Caption data: records, FDRD caption files and negative cleaning, Karpathy COCO / Flickr30k
files (pure Python)."""

from .fdrd import (
    Defect,
    FdrdReport,
    display_name,
    load_fdrd_json,
    mentions_class,
    parse_fdrd,
)
from .karpathy import load_karpathy_json
from .negatives import NegativeReport, clean_negatives
from .records import ImageRecord, Negative, NegativeKind, check_relative_path

__all__ = [
    "Defect",
    "FdrdReport",
    "ImageRecord",
    "Negative",
    "NegativeKind",
    "NegativeReport",
    "check_relative_path",
    "clean_negatives",
    "display_name",
    "load_fdrd_json",
    "load_karpathy_json",
    "mentions_class",
    "parse_fdrd",
]

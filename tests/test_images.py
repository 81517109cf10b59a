"""ImageIndex: FDRD file names resolved under the source datasets' own (CoOp) layouts."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from dualprompt.data import load_fdrd_json
from dualprompt.data.images import ImageIndex

# dataset root -> files under it (relative); the FDRD names below must find the first ones
LAYOUTS = {
    "caltech-101": [
        "101_ObjectCategories/Faces/image_0426.jpg",
        "101_ObjectCategories/Leopards/image_0426.jpg",  # same basename, another class
        "101_ObjectCategories/yin_yang/image_0001.jpg",  # class folder with an underscore
    ],
    "stanford_cars": ["cars_train/05266.jpg", "cars_test/05266.jpg"],
    "oxford_flowers": ["jpg/image_06422.jpg"],
    "oxford_pets": ["images/Sphynx_43.jpg", "annotations/trimaps/Sphynx_43.png"],
    "fgvc_aircraft": ["images/1514522.jpg", "images/README.txt"],
    "png_set": ["scans/scan_7.png"],
}


@pytest.fixture(scope="module")
def roots(tmp_path_factory) -> Path:
    base = tmp_path_factory.mktemp("images")
    for root, files in LAYOUTS.items():
        for rel in files:
            path = base / root / rel
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(b"\xff\xd8")  # the index looks at names only
    return base


@pytest.mark.parametrize("root, name, expected", [
    ("caltech-101", "Faces_image_0426.jpg", "101_ObjectCategories/Faces/image_0426.jpg"),
    ("caltech-101", "Leopards_image_0426.jpg", "101_ObjectCategories/Leopards/image_0426.jpg"),
    ("caltech-101", "yin_yang_image_0001.jpg", "101_ObjectCategories/yin_yang/image_0001.jpg"),
    ("stanford_cars", "cars_train_05266.jpg", "cars_train/05266.jpg"),
    ("stanford_cars", "cars_test_05266.jpg", "cars_test/05266.jpg"),
    ("oxford_flowers", "monkshood_image_06422.jpg", "jpg/image_06422.jpg"),
    ("oxford_flowers", "monkshood_image_06422", "jpg/image_06422.jpg"),  # as shipped
    ("oxford_pets", "Sphynx_43.jpg", "images/Sphynx_43.jpg"),
    ("oxford_pets", "Sphynx_43", "images/Sphynx_43.jpg"),
    ("fgvc_aircraft", "1514522.jpg", "images/1514522.jpg"),
    ("png_set", "scans/scan_7.png", "scans/scan_7.png"),  # a relative path, used as is
    ("png_set", "scan_7.png", "scans/scan_7.png"),
])
def test_fdrd_names_resolve_in_source_layouts(roots: Path, root: str, name: str,
                                              expected: str) -> None:
    assert ImageIndex(roots / root).resolve(name) == roots / root / expected


@pytest.mark.parametrize("root, name", [
    ("caltech-101", "Faces_image_9999.jpg"),
    ("oxford_pets", "Bengal_1.jpg"),
    ("fgvc_aircraft", "README.txt"),  # not an image suffix: never indexed ...
    ("fgvc_aircraft", "images_README.txt"),  # ... even through the folder form
    ("png_set", "scan_7.jpg"),  # the suffix is part of the name
])
def test_unknown_names_give_none(roots: Path, root: str, name: str) -> None:
    assert ImageIndex(roots / root).resolve(name) is None


@pytest.mark.parametrize("root, name", [
    ("caltech-101", "image_0426.jpg"),  # Faces/ and Leopards/
    ("caltech-101", "Motorbikes_image_0426.jpg"),  # no such folder: only the basename left
    ("stanford_cars", "05266.jpg"),  # cars_train/ and cars_test/
])
def test_ambiguous_matches_give_none(roots: Path, root: str, name: str) -> None:
    assert ImageIndex(roots / root).resolve(name) is None


def test_missing_root_raises_naming_it(tmp_path: Path) -> None:
    missing = tmp_path / "no_such_dataset"
    with pytest.raises(FileNotFoundError, match=re.escape(str(missing))):
        ImageIndex(missing)
    (tmp_path / "a_file").write_text("")
    with pytest.raises(FileNotFoundError, match="a_file"):
        ImageIndex(tmp_path / "a_file")


def _record(file_name: str, file_path: str, class_name: str | None) -> dict:
    """A valid FDRD record (schema C with a class, B without), the real files' file fields."""
    record = {"file_name": file_name, "file_path": file_path,
              "positive": "This is a photo of a thing.", "negative": []}
    if class_name is not None:
        record["class_name"] = class_name
    return record


# the first record of each real caption file (shared/fdrd/captions), fields as shipped
LOADER_CASES = [
    ("caltech-101", "Faces_image_0426.jpg",
     _record("Faces_image_0426.jpg", "YOUR_IMAGE_PATH", "face"),
     "101_ObjectCategories/Faces/image_0426.jpg"),
    ("stanford_cars", "cars_train_05266.jpg",
     _record("cars_train_05266.jpg", "YOUR_IMAGE_PATH", "2012 Audi TTS Coupe"),
     "cars_train/05266.jpg"),
    ("oxford_flowers", "monkshood_image_06422",
     _record("monkshood_image_06422", "/root/flower/test/monkshood_image_06422.jpg", "monkshood"),
     "jpg/image_06422.jpg"),
    ("oxford_pets", "Sphynx_43",
     _record("Sphynx_43", "/root/DATA/oxford_pets/images/Sphynx_43.jpg", None),
     "images/Sphynx_43.jpg"),
    ("fgvc_aircraft", "707-320_1514522",
     _record("1514522", "/root/DATA/fgvc_aircraft/images/1514522.jpg", None),
     "images/1514522.jpg"),
    ("png_set", "scan_7",
     _record("scan_7", "/root/scans/scan_7.png", "scan"), "scans/scan_7.png"),
]


@pytest.mark.parametrize("root, key, record, expected", LOADER_CASES)
def test_names_from_the_fdrd_loader_resolve(roots: Path, tmp_path: Path, root: str, key: str,
                                            record: dict, expected: str) -> None:
    path = tmp_path / "captions.json"
    path.write_text(json.dumps({key: record}), encoding="utf-8")
    (loaded,), _ = load_fdrd_json(path)
    assert Path(loaded.file_name).suffix in (".jpg", ".png")  # the loader adds one
    assert ImageIndex(roots / root).resolve(loaded.file_name) == roots / root / expected


def test_a_missing_image_never_falls_back_to_another_one(tmp_path: Path) -> None:
    """cars_train_05266.jpg must not resolve to cars_test/05266.jpg when the train file is
    missing, nor Sphynx_43.jpg (in two folders) to an unrelated 43.jpg."""
    for rel in ("cars_test/05266.jpg", "cars_train/00001.jpg", "a/Sphynx_43.jpg",
                "b/Sphynx_43.jpg", "c/43.jpg"):
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / rel).write_bytes(b"\xff\xd8")
    index = ImageIndex(tmp_path)
    assert index.resolve("cars_train_05266.jpg") is None
    assert index.resolve("Sphynx_43.jpg") is None
    assert index.resolve("cars_train_00001.jpg") == tmp_path / "cars_train/00001.jpg"

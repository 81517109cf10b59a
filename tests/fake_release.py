"""A fake FDRD release as users hold it: caption files under the released names (in FDRD/train
and FDRD/test, or flat), small images in CoOp's $DATA layout, one domain per record schema."""
from __future__ import annotations

import json
from pathlib import Path

from tests.toy_data import CLASSES, _image

# domain -> (schema, released train file, released test file)
RELEASE = {
    "caltech101": ("C", "inter_caltech-101_train.json", "inter_caltech-101_test.json"),
    "flowers102": ("A", "flower_train.json", "flower_test.json"),
    "oxford_pets": ("B", "pets_train.json", "pets_test.json"),
}
PER_CLASS = {"train": 4, "test": 2}


def _record(schema: str, cls: str, i: int, split: str, colour: str, pattern: str
            ) -> tuple[str, dict, str]:
    """(key, record, image path under $DATA) of one image in the domain's own layout."""
    desc = f"A {colour} square with {pattern} on a grey background, {split} picture {i}."
    others = [o for o in CLASSES if o != cls]
    number = f"{100 * (split == 'test') + 10 * list(CLASSES).index(cls) + i:05d}"
    if schema == "C":  # caltech: 101_ObjectCategories/<Class>/image_XXXX.jpg
        name = f"{cls.title()}_image_{number[1:]}.jpg"
        return name, {"file_name": name, "class_name": cls, "file_path": "YOUR_IMAGE_PATH",
                      "positive": f"This is a photo of {cls}.{desc}", "negative": []}, \
            f"caltech-101/101_ObjectCategories/{cls.title()}/image_{number[1:]}.jpg"
    if schema == "A":  # flowers: jpg/image_XXXXX.jpg
        key = f"{cls}_image_{number}"
        return key, {"file_name": key, "class_name": cls, "number": number,
                     "file_path": f"/authors/flower/{split}/{key}.jpg",
                     "positive": f"This is a {cls}.{desc}",
                     "negative": [f"This is a {o}.{desc}" for o in others]
                     + [f"This is a {cls}.{desc}"]}, \
            f"oxford_flowers/jpg/image_{number}.jpg"
    key = f"{cls.title()}_{int(number)}"  # pets: images/<Breed>_<n>.jpg, no class field
    return key, {"file_name": key, "file_path": f"/authors/oxford_pets/images/{key}.jpg",
                 "positive": f"A {cls} {desc}",
                 "negative": [f"A {o} {desc}" for o in others]}, f"oxford_pets/images/{key}.jpg"


def write_release(root: Path, flat: bool = False) -> tuple[Path, Path]:
    """(the $DATA folder, the FDRD caption folder). Not flat: latest-revision files in train/
    and test/, the earlier flat one (caltech's test file) beside them, as a user who took both
    revisions has it."""
    data, fdrd = root / "DATA", root / "FDRD"
    for domain, (schema, train_file, test_file) in RELEASE.items():
        for split, file in (("train", train_file), ("test", test_file)):
            records = {}
            for c, (cls, (colour, pattern)) in enumerate(CLASSES.items()):
                for i in range(PER_CLASS[split]):
                    key, record, image = _record(schema, cls, i, split, colour, pattern)
                    records[key] = record
                    (data / image).parent.mkdir(parents=True, exist_ok=True)
                    _image(colour, pattern, seed=hash((domain, split, c, i)) % 2**32).save(
                        data / image, format="JPEG")
            earlier = domain == "caltech101" and split == "test"
            folder = fdrd if flat or earlier else fdrd / split
            folder.mkdir(parents=True, exist_ok=True)
            (folder / file).write_text(json.dumps(records))
    return data, fdrd


def write_catalogue(root: Path, per_class: dict | None = None) -> dict[str, Path]:
    """The same small catalogue as CSV (tab-separated, open_clip's columns plus a class
    column), JSONL (metadata.jsonl style) and WebDataset shards (png, txt, json with the class;
    written by webdataset's own TarWriter, train in 4 shards, test in 2) for train and test;
    images in root/images. `files["train_wds"]` is the brace-expanded shard spec."""
    per_class = per_class or {"train": 4, "test": 2}
    (root / "images").mkdir(parents=True, exist_ok=True)
    files = {}
    for split, n in per_class.items():
        rows = []
        for c, (cls, (colour, pattern)) in enumerate(CLASSES.items()):
            for i in range(n):
                name = f"images/{cls}_{split}_{i}.png"
                _image(colour, pattern, seed=hash(("cat", split, c, i)) % 2**32).save(root / name)
                rows.append((name, f"a {cls} item, {colour} with {pattern}, {split} number {i}",
                             cls))
        csv_path = root / f"{split}.csv"
        csv_path.write_text("filepath\ttitle\tlabel\n" + "".join(
            f"{p}\t{t}\t{c}\n" for p, t, c in rows))
        jsonl_path = root / f"{split}.jsonl"
        jsonl_path.write_text("".join(json.dumps({"file_name": p, "text": t, "label": c}) + "\n"
                                      for p, t, c in rows))
        files[f"{split}_csv"], files[f"{split}_jsonl"] = csv_path, jsonl_path
        files[f"{split}_wds"] = _shards(root / "shards" / split, rows, 4 if split == "train" else 2)
    return files


def _shards(folder: Path, rows: list[tuple[str, str, str]], n: int) -> str:
    import webdataset as wds
    folder.mkdir(parents=True, exist_ok=True)
    per_shard = -(-len(rows) // n)
    for shard in range(n):
        with wds.TarWriter(str(folder / f"{shard:05d}.tar")) as sink:
            for i, (path, caption, cls) in enumerate(rows[shard * per_shard:][:per_shard]):
                sink.write({"__key__": f"{shard * per_shard + i:06d}",
                            "png": (folder.parents[1] / path).read_bytes(), "txt": caption,
                            "json": {"label": cls}})
    return str(folder / f"{{00000..{n - 1:05d}}}.tar")

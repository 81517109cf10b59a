"""Karpathy-split caption files (COCO / Flickr30k format), on small files written by the tests."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from dualprompt.data import load_karpathy_json


def image(imgid: int, split: str, filename: str | None = None, filepath: str | None = None,
          n_sentences: int = 5) -> dict:
    entry = {
        "filename": filename or f"{imgid}.jpg",
        "imgid": imgid,
        "split": split,
        "sentids": list(range(n_sentences)),
        "sentences": [{"raw": f"Caption {i} of image {imgid}. ", "tokens": ["caption"],
                       "imgid": imgid} for i in range(n_sentences)],
    }
    if filepath is not None:
        entry["filepath"] = filepath
    return entry


def write(folder: Path, images: list, dataset: str | None = "coco",
          name: str = "dataset_coco.json") -> Path:
    path = folder / name
    obj: dict = {"images": images}
    if dataset is not None:
        obj["dataset"] = dataset
    path.write_text(json.dumps(obj), encoding="utf-8")
    return path


def coco_file(folder: Path) -> Path:
    return write(folder, [
        image(0, "train", "COCO_train2014_000000000009.jpg", "train2014"),
        image(1, "restval", "COCO_val2014_000000000042.jpg", "val2014"),
        image(2, "val", "COCO_val2014_000000000073.jpg", "val2014"),
        image(3, "test", "COCO_val2014_000000000074.jpg", "val2014", n_sentences=6),
    ])


def test_coco_splits(tmp_path: Path) -> None:
    path = coco_file(tmp_path)
    train = load_karpathy_json(path, "train")
    assert [r.image_id for r in train] == ["0", "1"]  # train includes restval
    assert train[0].file_name == "train2014/COCO_train2014_000000000009.jpg"
    assert [r.image_id for r in load_karpathy_json(path, "restval")] == ["1"]
    assert [r.image_id for r in load_karpathy_json(path, "val")] == ["2"]
    (test,) = load_karpathy_json(path, "test")
    assert test.file_name == "val2014/COCO_val2014_000000000074.jpg"
    assert test.class_name is None and test.negatives == () and test.domain == "coco"
    assert len(test.captions) == 6 and test.captions[0] == "Caption 0 of image 3."  # stripped


def test_flickr_without_filepath_or_dataset(tmp_path: Path) -> None:
    entry = image(7, "test", "1000092795.jpg")
    del entry["imgid"]
    path = write(tmp_path, [entry, image(8, "train")], dataset=None, name="dataset_flickr30k.json")
    (record,) = load_karpathy_json(path, "test")
    assert record.file_name == "1000092795.jpg" and record.image_id == "1000092795.jpg"
    assert record.domain == "dataset_flickr30k"


def test_unknown_split_argument(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="split must be one of"):
        load_karpathy_json(coco_file(tmp_path), "training")


def bad(entry: dict, **changes: object) -> dict:
    entry = dict(entry)
    for key, value in changes.items():
        if value is ...:
            del entry[key]
        else:
            entry[key] = value
    return entry


@pytest.mark.parametrize(
    ("entry", "expected"),
    [
        ([1], "not a JSON object"),
        (bad(image(1, "val"), split="valid"), "'split' must be one of"),
        (bad(image(1, "val"), split=...), "'split' must be one of"),
        (bad(image(1, "val"), filename=...), "'filename' must be a non-empty string"),
        (bad(image(1, "val"), filename=""), "'filename' must be a non-empty string"),
        (bad(image(1, "val"), filepath=3), "'filepath' must be a string"),
        (bad(image(1, "val"), filename="/x/1.jpg"), "absolute"),
        (bad(image(1, "val"), filepath="../elsewhere"), "'..'"),
        (bad(image(1, "val"), sentences=[]), "'sentences' must be a non-empty list"),
        (bad(image(1, "val"), sentences=...), "'sentences' must be a non-empty list"),
        (bad(image(1, "val"), sentences=[{"raw": "ok"}, {"tokens": []}]), "sentences[1]"),
        (bad(image(1, "val"), sentences=[{"raw": "  "}]), "sentences[0]"),
        (bad(image(1, "val"), imgid=[1]), "'imgid' must be an integer or a string"),
        (image(0, "val", "other.jpg"), "duplicate image id '0'"),
    ],
)
def test_malformed_entry_names_file_and_entry(tmp_path: Path, entry: object, expected: str) -> None:
    path = write(tmp_path, [image(0, "train"), entry])
    with pytest.raises(ValueError) as err:
        load_karpathy_json(path, "test")  # every entry is checked, whatever the split
    message = str(err.value)
    assert str(path) in message and "images[1]" in message and expected in message


def test_many_bad_entries_are_summarised(tmp_path: Path) -> None:
    path = write(tmp_path, [bad(image(i, "val"), split="x") for i in range(7)])
    with pytest.raises(ValueError) as err:
        load_karpathy_json(path, "val")
    message = str(err.value)
    assert "7 malformed record(s)" in message and "images[4] ('4.jpg')" in message
    assert "images[5]" not in message and "(and 2 more)" in message


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ('{"images": [', "invalid JSON at line 1 column 13"),
        ("[]", "expected a JSON object with an 'images' list"),
        ('{"images": {}}', "expected a JSON object with an 'images' list"),
    ],
)
def test_bad_files_name_the_file(tmp_path: Path, text: str, expected: str) -> None:
    path = tmp_path / "dataset_coco.json"
    path.write_text(text, encoding="utf-8")
    with pytest.raises(ValueError) as err:
        load_karpathy_json(path, "train")
    assert str(path) in str(err.value) and expected in str(err.value)


_sentences = st.lists(st.dictionaries(st.sampled_from(["raw", "tokens"]),
                                      st.text(max_size=6) | st.integers(), max_size=2), max_size=3)
_values = st.none() | st.integers() | st.text(max_size=6) | _sentences
_fields = st.sampled_from(["filename", "filepath", "split", "sentences", "imgid"])
_entries = st.dictionaries(_fields, _values)
_good_entries = st.builds(image, st.integers(0, 5),
                          st.sampled_from(["train", "val", "test", "restval"]),
                          st.sampled_from(["a.jpg", "b.jpg", None]),
                          st.sampled_from([None, "val2014", "", "../x"]))


@settings(max_examples=150, deadline=None)
@given(images=st.lists(_good_entries | _entries | _values, max_size=4),
       split=st.sampled_from(["train", "val", "test", "restval"]))
def test_fuzz_records_or_value_error(tmp_path_factory: pytest.TempPathFactory, images: list,
                                     split: str) -> None:
    path = write(tmp_path_factory.mktemp("fuzz"), images)
    try:
        records = load_karpathy_json(path, split)
    except ValueError as err:
        assert str(path) in str(err)
        return
    assert len({r.image_id for r in records}) == len(records)

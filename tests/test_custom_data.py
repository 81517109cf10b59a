"""`dataset=custom`: your own catalogue as CSV/TSV, JSONL or WebDataset shards, through the
real CLI; the same data in any format gives identical zero-shot test numbers; bad rows name the
file and line."""
from __future__ import annotations

import json

import pytest

from dualprompt.data.custom import load_table
from tests.fake_release import write_catalogue
from tests.test_fdrd_release import cli, release  # noqa: F401  (module fixture)
from tests.toy_data import CLASSES


@pytest.fixture(scope="module")
def catalogue(tmp_path_factory):
    return write_catalogue(tmp_path_factory.mktemp("catalogue"))


def test_csv_and_jsonl_read_the_same_records(catalogue):
    csv = load_table(catalogue["train_csv"], "csv", class_key="label")
    jsonl = load_table(catalogue["train_jsonl"], "jsonl", class_key="label")
    strip = [(r.file_name, r.class_name, r.captions) for r in csv]
    assert strip == [(r.file_name, r.class_name, r.captions) for r in jsonl]
    assert len(csv) == 4 * len(CLASSES) and csv[0].image_id == "train.csv:2"


@pytest.mark.parametrize("text, message", [
    ("filepath\ttitle\nimages/a.png\t\n", r"train.csv:2: empty caption in column 'title'"),
    ("path\ttitle\nimages/a.png\ta cat\n", r"train.csv:2: no \['filepath'\] column"),
    ("filepath\ttitle\nimages/a.png\ta cat\textra\n", r"train.csv:2: more cells than the header"),
])
def test_bad_csv_rows_name_the_file_and_line(tmp_path, text, message):
    (tmp_path / "train.csv").write_text(text)
    with pytest.raises(ValueError, match=message):
        load_table(tmp_path / "train.csv", "csv")


def test_a_jsonl_line_with_a_duplicate_key_is_an_error(tmp_path):
    (tmp_path / "m.jsonl").write_text('{"file_name": "a.png", "text": "x"}\n'
                                      '{"file_name": "b.png", "text": "y", "text": "z"}\n')
    with pytest.raises(ValueError, match=r"m.jsonl:2: duplicate key 'text'"):
        load_table(tmp_path / "m.jsonl", "jsonl")


def _run(release, catalogue, fmt: str, *extra: str, check: bool = True):  # noqa: F811
    run_dir = release["tmp"] / f"custom_{fmt}_{len(extra)}"
    proc = cli("dualprompt.train", release, run_dir, "dataset=custom",
               # quoted, as shard specs must be: Hydra's grammar reads {..} otherwise
               f"dataset.train_data='{catalogue[f'train_{fmt}']}'",
               f"dataset.test_data='{catalogue[f'test_{fmt}']}'", *extra, check=check)
    return proc, run_dir


@pytest.mark.slow  # two training runs
def test_csv_jsonl_and_shards_train_and_give_identical_zero_shot_numbers(release,  # noqa: F811
                                                                         catalogue):  # noqa: F811
    results = {}
    for fmt in ("csv", "jsonl", "wds"):  # wds: WebDataset shards of the same data
        _, run_dir = _run(release, catalogue, fmt, "dataset.class_key=label")
        results[fmt] = json.loads((run_dir / "results.json").read_text())
        assert results[fmt]["data"]["images"]["custom"]["test"] == 2 * len(CLASSES)
        assert "custom/negatives" in results[fmt]["data"]["reports"]  # classes: negatives on
    assert results["csv"]["zero_shot"] == results["jsonl"]["zero_shot"] == results["wds"][
        "zero_shot"]


def test_without_a_class_column_the_category_loss_is_said_off(release, catalogue):  # noqa: F811
    proc, run_dir = _run(release, catalogue, "csv")
    results = json.loads((run_dir / "results.json").read_text())
    assert results["data"]["reports"]["custom/negatives"] == {
        "off": "no class column (dataset.class_key)"}
    assert "the category-aware loss is off" in proc.stdout + proc.stderr


def test_a_missing_image_in_a_csv_names_the_file_and_line(release, tmp_path):  # noqa: F811
    files = write_catalogue(tmp_path)
    lines = files["train_csv"].read_text().splitlines()
    (tmp_path / lines[3].split("\t")[0]).unlink()  # the image of line 4
    proc = cli("dualprompt.train", release, tmp_path / "run", "dataset=custom",
               f"dataset.train_data={files['train_csv']}", check=False)
    assert proc.returncode == 1
    assert "'train.csv:4'" in proc.stderr and "not found" in proc.stderr

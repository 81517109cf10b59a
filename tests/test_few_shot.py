"""`dataset.shots=K`: exactly K training images per class, the same at a seed whatever the
method, validation cut to min(K, 4) a class (or kept whole with `dataset.few_shot_val=false`),
test untouched; data without classes is refused by name.
`dataset.base_to_novel=true`: training sees base classes only, the base and novel galleries
hold only theirs, and results give the harmonic mean."""
from __future__ import annotations

import json
from collections import Counter

import pytest

from dualprompt.data.datasets import few_shot
from dualprompt.data.records import ImageRecord
from dualprompt.training.datamodule import RetrievalDataModule
from dualprompt.training.schema import DatasetConfig
from tests.test_custom_data import _run, catalogue  # noqa: F401  (module fixture)
from tests.test_fdrd_release import release  # noqa: F401  (module fixture)


def _data(catalogue, seed, **keys):  # noqa: F811
    cfg = DatasetConfig(name="custom", root=".", train_data=str(catalogue["train_csv"]),
                        test_data=str(catalogue["test_csv"]), class_key="label", **keys)
    data = RetrievalDataModule(cfg, tokenizer=None, train_transform=None, eval_transform=None,
                               batch_size=2, eval_batch_size=2, num_workers=0, seed=seed)
    data.setup()
    return data.domains["custom"]


def test_shots_take_exactly_k_per_class_and_leave_val_and_test(catalogue):  # noqa: F811
    full = _data(catalogue, seed=0)
    few = _data(catalogue, seed=0, shots=2)
    assert Counter(s.record.class_name for s in few.train) == {c: 2 for c in
                                                               {"alpha", "beta", "gamma",
                                                                "delta"}}
    full_ids = {s.record.image_id for s in full.train}
    assert {s.record.image_id for s in few.train} <= full_ids
    # validation shrinks to min(K, 4) a class, as CoOp's few-shot splits; test is untouched
    assert {s.record.image_id for s in few.val} <= {s.record.image_id for s in full.val}
    assert max(Counter(s.record.class_name for s in few.val).values()) <= 2
    assert len(few.test) == len(full.test)
    again = _data(catalogue, seed=0, shots=2)
    assert [s.record.image_id for s in again.train] == [s.record.image_id for s in few.train]
    other = _data(catalogue, seed=1, shots=1)
    assert len(other.train) == 4


def test_few_shot_val_false_keeps_the_whole_validation_split(catalogue):  # noqa: F811
    full = _data(catalogue, seed=0, val_fraction=0.5)
    few = _data(catalogue, seed=0, val_fraction=0.5, shots=1)
    kept = _data(catalogue, seed=0, val_fraction=0.5, shots=1, few_shot_val=False)
    assert len(kept.train) == len(few.train) == 4
    assert len(few.val) < len(full.val)  # the default, CoOp's: min(K, 4) a class
    assert [s.record.image_id for s in kept.val] == [s.record.image_id for s in full.val]


def test_shots_need_classes():
    records = [ImageRecord(f"r{i}", f"{i}.jpg", None, ("a cat",)) for i in range(3)]
    with pytest.raises(ValueError, match=r"needs a class per record; 'r0' has none"):
        few_shot(records, 1, seed=0, where="train.csv")


def test_a_class_with_fewer_images_keeps_them_all():
    records = [ImageRecord(f"r{i}", f"{i}.jpg", "a" if i < 3 else "b", ("x",)) for i in range(4)]
    kept = few_shot(records, 2, seed=0)
    assert Counter(r.class_name for r in kept) == {"a": 2, "b": 1}


def test_base_to_novel_trains_on_base_classes_and_tests_two_galleries(catalogue):  # noqa: F811
    cfg = DatasetConfig(name="custom", root=".", train_data=str(catalogue["train_csv"]),
                        test_data=str(catalogue["test_csv"]), class_key="label",
                        base_to_novel=True)
    data = RetrievalDataModule(cfg, tokenizer=None, train_transform=None, eval_transform=None,
                               batch_size=2, eval_batch_size=2, num_workers=0, seed=0)
    data.setup()
    assert data.base_classes["custom"] == ["alpha", "beta"]  # sorted, first half
    assert data.test_domains() == ["custom/base", "custom/novel"]
    classes = lambda samples: {s.record.class_name for s in samples}  # noqa: E731
    assert classes(data.domains["custom"].val) <= {"alpha", "beta"}
    assert classes(data.domains["custom"].train) == {"alpha", "beta"}
    assert classes(data.domains["custom/base"].test) == {"alpha", "beta"}
    assert classes(data.domains["custom/novel"].test) == {"gamma", "delta"}
    assert len(data.domains["custom/base"].test) + len(data.domains["custom/novel"].test) == 8
    # no generated negative names a novel class
    negatives = {n.class_name for s in data.domains["custom"].train for n in s.record.negatives}
    assert negatives and negatives <= {"alpha", "beta"}


@pytest.mark.slow  # a training run
def test_base_to_novel_reports_the_harmonic_mean(release, catalogue):  # noqa: F811
    _, run_dir = _run(release, catalogue, "csv", "dataset.class_key=label",
                      "dataset.base_to_novel=true")
    results = json.loads((run_dir / "results.json").read_text())
    assert set(results["test"]) == {"custom/base", "custom/novel", "AVG"}
    hm = results["base_to_novel"]["test"]["custom"]["i2t_R@1"]
    assert hm["base"] == results["test"]["custom/base"]["i2t_R@1"]
    b, n = hm["base"], hm["novel"]
    assert hm["hm"] == pytest.approx(2 * b * n / (b + n) if b + n else 0.0)


@pytest.mark.slow  # a training run
def test_shots_through_the_cli(release, catalogue):  # noqa: F811
    _, run_dir = _run(release, catalogue, "jsonl", "dataset.class_key=label", "dataset.shots=2",
                      "seed=1")
    results = json.loads((run_dir / "results.json").read_text())
    assert results["data"]["images"]["custom"]["train"] == 2 * 4  # 2 a class, 4 classes
    assert results["config"]["dataset"]["shots"] == 2

"""FDRD caption files: schemas, errors, defect counts, negative cleaning (no images, no torch)."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from dualprompt.data import (
    ImageRecord,
    Negative,
    NegativeKind,
    NegativeReport,
    clean_negatives,
    load_fdrd_json,
    mentions_class,
    parse_fdrd,
)
from dualprompt.data.records import parse_json_text

CAPTIONS = Path(__file__).resolve().parents[2] / "shared" / "fdrd" / "captions"


def write_json(folder: Path, name: str, obj: object) -> Path:
    path = folder / name
    path.write_text(json.dumps(obj), encoding="utf-8")
    return path


def schema_a(cls: str, number: str, description: str, negatives: list[str] | None = None) -> dict:
    positive = f"This is a {cls}.{description}"
    return {
        "file_name": f"{cls}_image_{number}",
        "class_name": cls,
        "number": number,
        "file_path": f"/root/flower/test/{cls}_image_{number}.jpg",
        "positive": positive,
        "negative": negatives if negatives is not None else [],
    }


def schema_b(file_name: str, positive: str, negatives: list[str]) -> dict:
    return {"file_name": file_name, "file_path": f"/root/images/{file_name}.jpg",
            "positive": positive, "negative": negatives}


def schema_c(file_name: str, cls: str, description: str) -> dict:
    return {"file_name": file_name, "class_name": cls, "file_path": "YOUR_IMAGE_PATH",
            "positive": f"This is a photo of {cls}.{description}", "negative": []}


# ---------------------------------------------------------------------------------------------
# schemas


def test_schema_a_flower_like(tmp_path: Path) -> None:
    data = {"orange_dahlia_image_05020": schema_a("orange_dahlia", "05020", "An orange flower.",
                                                   ["This is a monkshood.An orange flower."])}
    records, report = load_fdrd_json(write_json(tmp_path, "flower_test.json", data))
    (record,) = records
    assert record.image_id == "orange_dahlia_image_05020"
    assert record.file_name == "orange_dahlia_image_05020.jpg"  # extension taken from file_path
    assert record.class_name == "orange_dahlia"
    assert record.captions == ("This is a orange_dahlia.An orange flower.",)
    assert record.domain == "flower"
    assert record.negatives == (Negative("This is a monkshood.An orange flower.", "", "shipped"),)
    assert report.schemas == (("A", 1),) and report.n_records == 1 and report.n_classes == 1


def test_schema_b_class_from_key(tmp_path: Path) -> None:
    data = {
        "basset_hound_12": schema_b("basset_hound_12", "A Basset Hound on grass.",
                                    ["A pug on grass."]),
        "pug_3": schema_b("pug_3", "A pug on a sofa.", ["A basset hound on a sofa."]),
        "707-320_1514522": schema_b("1514522", "A white 707-320 airplane.",
                                    ["A white A310 airplane."]),
    }
    records, report = load_fdrd_json(write_json(tmp_path, "pets_test.json", data), domain="mixed")
    assert [r.class_name for r in records] == ["basset_hound", "pug", "707-320"]
    assert [r.file_name for r in records] == ["basset_hound_12.jpg", "pug_3.jpg", "1514522.jpg"]
    assert {r.domain for r in records} == {"mixed"}
    # the shipped negatives' class is the class they mention that the positive does not
    assert [r.negatives[0].class_name for r in records] == ["pug", "basset_hound", ""]
    assert report.schemas == (("B", 3),)
    assert report.positives_lacking_class.count == 0  # "Basset Hound" matches basset_hound


def test_schema_c_caltech_like(tmp_path: Path) -> None:
    data = {"Faces_image_0426.jpg": schema_c("Faces_image_0426.jpg", "face", "A woman smiles.")}
    records, report = load_fdrd_json(write_json(tmp_path, "inter_caltech-101_train.json", data))
    assert records[0].file_name == "Faces_image_0426.jpg"
    assert records[0].class_name == "face" and records[0].negatives == ()
    assert records[0].domain == "caltech-101"
    assert report.schemas == (("C", 1),) and report.n_shipped_negatives == 0


def test_schemas_are_detected_per_record() -> None:
    data = {
        "rose_image_1": schema_a("rose", "1", "Red."),
        "pug_3": schema_b("pug_3", "A pug.", []),
        "x.jpg": schema_c("x.jpg", "cup", "A cup."),
    }
    records, report = parse_fdrd(data, "mem")
    assert report.schemas == (("A", 1), ("B", 1), ("C", 1))
    assert report.n_classes == 3 and len(records) == 3


def test_shipped_negative_class_prefers_the_new_longest_mention() -> None:
    data = {
        "tree_mallow_image_1": schema_a("tree_mallow", "1", "Pink.", ["This is a mallow.Pink."]),
        "mallow_image_2": schema_a("mallow", "2", "Red.", ["This is a tree mallow.Red."]),
    }
    records, _ = parse_fdrd(data, "mem")
    assert records[0].negatives[0].class_name == "mallow"
    assert records[1].negatives[0].class_name == "tree_mallow"


def test_mentions_class_is_case_and_underscore_insensitive() -> None:
    assert mentions_class("A Basset Hound runs", "basset_hound")
    assert mentions_class("This is a orange_dahlia.", "orange dahlia")
    assert not mentions_class("A basset-hound", "basset_hound")
    assert mentions_class("a pink primrose", "rose")  # lenient substring, by design


# ---------------------------------------------------------------------------------------------
# errors: the message names the file and the record


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ([1, 2], "not a JSON object"),
        ({"file_name": "a", "negative": []}, "missing field(s) 'positive'"),
        ({"file_name": "a", "positive": "", "negative": []}, "positive must be a non-empty string"),
        ({"file_name": "a", "positive": 3, "negative": []}, "positive must be a non-empty string"),
        ({"file_name": "a", "positive": "A pug.", "negative": "A cat."}, "negative is not a list"),
        ({"file_name": "a", "positive": "A pug.", "negative": ["ok", ""]}, "negative[1]"),
        ({"file_name": "a", "positive": "A pug.", "negative": [None]}, "negative[0]"),
        ({"file_name": "a", "class_name": " ", "positive": "A pug.", "negative": []}, "class_name"),
        ({"file_name": "/abs/a.jpg", "positive": "A pug.", "negative": []}, "absolute"),
        ({"file_name": "C:\\a.jpg", "positive": "A pug.", "negative": []}, "absolute"),
        ({"file_name": "../a.jpg", "positive": "A pug.", "negative": []}, "'..'"),
        ({"file_name": "x\\..\\a.jpg", "positive": "A pug.", "negative": []}, "'..'"),
        ({"file_name": 7, "positive": "A pug.", "negative": []}, "file name must be a non-empty"),
    ],
)
def test_malformed_record_names_file_and_key(tmp_path: Path, value: object, expected: str) -> None:
    data = {"pug_1": schema_b("pug_1", "A pug.", []), "pug_2": value}
    path = write_json(tmp_path, "bad.json", data)
    with pytest.raises(ValueError) as err:
        load_fdrd_json(path)
    message = str(err.value)
    assert str(path) in message and "'pug_2'" in message and expected in message
    assert "'pug_1'" not in message


def test_schema_b_key_without_number(tmp_path: Path) -> None:
    path = write_json(tmp_path, "bad.json", {"pug": schema_b("pug", "A pug.", [])})
    with pytest.raises(ValueError, match=r"bad\.json.*'pug'.*does not end in '_<number>'"):
        load_fdrd_json(path)


def test_many_bad_records_are_summarised(tmp_path: Path) -> None:
    path = write_json(tmp_path, "bad.json", {f"k_{i}": [] for i in range(8)})
    with pytest.raises(ValueError) as err:
        load_fdrd_json(path)
    message = str(err.value)
    assert "8 malformed record(s)" in message and "'k_0'" in message and "'k_4'" in message
    assert "'k_5'" not in message and "(and 3 more)" in message


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ('{"a_1": {"file_name": "a"', "invalid JSON at line 1 column"),
        ("[1, 2]", "expected a JSON object keyed by image id"),
        ("{}", "contains no records"),
        ('{"a_1": {}, "a_1": {}}', "duplicate key 'a_1'"),
        ("[" * 100_000, "JSON"),
    ],
)
def test_bad_files_name_the_file(tmp_path: Path, text: str, expected: str) -> None:
    path = tmp_path / "broken.json"
    path.write_text(text, encoding="utf-8")
    with pytest.raises(ValueError) as err:
        load_fdrd_json(path)
    assert str(path) in str(err.value) and expected in str(err.value)


def test_non_utf8_file(tmp_path: Path) -> None:
    path = tmp_path / "latin1.json"
    path.write_bytes(b'{"\xe9_1": 1}')
    with pytest.raises(ValueError, match="latin1.json: not UTF-8"):
        load_fdrd_json(path)


# ---------------------------------------------------------------------------------------------
# defect report


def test_defects_are_counted_with_examples() -> None:
    data = {
        # 2 identical negatives, 1 naming the true class, duplicates
        "pug_1": schema_b("pug_1", "A pug on grass.", ["A pug on grass.", "A pug on grass.",
                                                         "A pug and a beagle on grass.",
                                                         "A boxer on grass."]),
        # lacks its class and names another one instead
        "pug_2": schema_b("pug_2", "A beagle on grass.", ["A boxer on grass."]),
        # lacks its class and names no other one
        "pug_3": schema_b("pug_3", "A dog.", ["A cat."]),
        # shares its positive with pug_5
        "beagle_4": schema_b("beagle_4", "A beagle.", ["A boxer."]),
        "beagle_5": schema_b("beagle_5", "A beagle.", ["A pug."]),
        "boxer_6": schema_b("boxer_6", "A Boxer.", ["A pug."]),
    }
    _, report = parse_fdrd(data, "mem", max_examples=1)
    assert report.negatives_identical.count == 2
    assert report.records_with_identical_negative.count == 1
    assert report.negatives_naming_true_class.count == 1
    assert report.records_with_duplicate_negatives.count == 1
    assert report.positives_lacking_class.count == 2
    assert report.positives_naming_other_class.count == 1
    assert report.positives_naming_other_class.examples == ("pug_2",)
    assert report.records_sharing_positive.count == 2
    assert report.records_sharing_positive.examples == ("beagle_4",)  # max_examples=1
    summary = report.summary()
    assert "negatives identical: 2 (e.g. pug_1)" in summary and "mem" in summary


# ---------------------------------------------------------------------------------------------
# negative cleaning


def domain_records() -> list[ImageRecord]:
    """A small schema-C domain: 4 classes (two of meta-category 'cat'), 3 images each."""
    descriptions = ["on a red sofa.", "in tall grass.", "next to a blue ball."]
    classes = ["Persian", "Siamese", "pug", "basset_hound"]
    records = []
    for cls in classes:
        for i, text in enumerate(descriptions):
            positive = f"This is a photo of {cls.replace('_', ' ')}.A {cls} sits {text}"
            record = ImageRecord(f"{cls}_{i}", f"{cls}_{i}.jpg", cls, (positive,), (), "pets")
            records.append(record)
    return records


CLASSES = ["Persian", "Siamese", "pug", "basset_hound"]
META = {"Persian": "cat", "Siamese": "cat", "pug": "dog", "basset_hound": "dog"}


def check_invariants(records: list[ImageRecord], cleaned: list[ImageRecord], report: NegativeReport,
                     k: int) -> None:
    assert [r.image_id for r in cleaned] == [r.image_id for r in records]
    total = 0
    for record in cleaned:
        positive, cls = record.captions[0], str(record.class_name)
        texts = [n.text for n in record.negatives]
        assert len(texts) <= k and len(set(t.casefold() for t in texts)) == len(texts)
        for negative in record.negatives:
            assert negative.text.casefold() != positive.casefold()
            if negative.kind is NegativeKind.ATTRIBUTE_SWAP:
                assert negative.class_name == cls and mentions_class(negative.text, cls)
            else:
                assert not mentions_class(negative.text, cls)
        total += len(texts)
    assert report.shipped == (report.kept_shipped + report.dropped_identical
                              + report.dropped_names_true_class + report.dropped_duplicate
                              + report.dropped_surplus)
    assert total == report.kept_shipped + report.class_swaps + report.attribute_swaps
    assert total == k * len(records) - report.missing_negatives
    assert report.records_short == sum(len(r.negatives) < k for r in cleaned)


def test_clean_generates_half_class_half_attribute_swaps() -> None:
    records = domain_records()
    cleaned, report = clean_negatives(records, CLASSES, k=4, seed=0)
    check_invariants(records, cleaned, report, 4)
    for record in cleaned:
        kinds = Counter(n.kind for n in record.negatives)
        assert kinds == {NegativeKind.CLASS_SWAP: 2, NegativeKind.ATTRIBUTE_SWAP: 2}
    first = cleaned[0].negatives
    assert first[0].text.startswith("This is a photo of ") and first[0].class_name in CLASSES[1:]
    assert first[2].text.startswith("This is a photo of Persian.A Persian sits ")
    assert report.records_short == 0 and report.class_swaps == report.attribute_swaps == 24


def test_clean_class_swaps_only() -> None:
    records = domain_records()
    cleaned, report = clean_negatives(records, CLASSES, k=3, attribute_swap=False)
    check_invariants(records, cleaned, report, 3)
    assert report.attribute_swaps == 0 and report.class_swaps == 36
    assert all(n.kind is NegativeKind.CLASS_SWAP for r in cleaned for n in r.negatives)


def test_clean_prefers_same_meta_category() -> None:
    records = domain_records()
    cleaned, report = clean_negatives(records, CLASSES, k=2, meta_category=META)
    check_invariants(records, cleaned, report, 2)
    for record in cleaned:
        swap = next(n for n in record.negatives if n.kind is NegativeKind.CLASS_SWAP)
        assert META[swap.class_name] == META[str(record.class_name)]
    assert report.class_swaps_same_meta_category == report.class_swaps == 12


def test_clean_is_deterministic_and_order_independent() -> None:
    records = domain_records()
    first, _ = clean_negatives(records, CLASSES, seed=3)
    again, _ = clean_negatives(records, CLASSES, seed=3)
    backwards, _ = clean_negatives(records[::-1], CLASSES, seed=3)
    other_seed, _ = clean_negatives(records, CLASSES, seed=4)
    assert first == again
    assert first == backwards[::-1]
    assert first != other_seed


def test_clean_drops_bad_shipped_negatives() -> None:
    positive = "A pug on grass."
    shipped = [positive, "A PUG  on grass.", "A pug and a boxer.", "A boxer on grass.",
               "A boxer on grass.", "A beagle on grass.", "A Persian on grass.",
               "A Siamese on grass."]
    record = ImageRecord("pug_1", "pug_1.jpg", "pug", (positive,),
                         tuple(Negative(t, "", "shipped") for t in shipped))
    donor = ImageRecord("boxer_1", "boxer_1.jpg", "boxer", ("A boxer in snow.",))
    classes = ["pug", "boxer", "beagle", "Persian", "Siamese"]
    cleaned, report = clean_negatives([record, donor], classes, k=4)
    check_invariants([record, donor], cleaned, report, 4)
    drops = (report.dropped_identical, report.dropped_names_true_class, report.dropped_duplicate)
    assert drops == (2, 1, 1)
    assert report.kept_shipped == 3  # 2 as the class-swap share, 1 after the only attribute swap
    assert report.dropped_surplus == 1
    texts = [n.text for n in cleaned[0].negatives]
    assert texts[:2] == ["A boxer on grass.", "A beagle on grass."]
    assert texts[2] == "A pug in snow."  # attribute swap from the boxer image
    assert texts[3] == "A Persian on grass."


def test_clean_single_class_domain_is_reported_not_fatal() -> None:
    records = [ImageRecord(f"pug_{i}", f"pug_{i}.jpg", "pug", (f"A pug number {i}.",))
               for i in range(3)]
    cleaned, report = clean_negatives(records, ["pug"], k=4)
    check_invariants(records, cleaned, report, 4)
    assert report.records_single_class == report.records_short == 3
    assert report.missing_negatives == 12
    assert report.short_examples == ("pug_0", "pug_1", "pug_2")
    assert "records single class: 3" in report.summary()


def test_clean_positive_without_class_gets_attribute_swaps() -> None:
    records = [ImageRecord("pug_1", "pug_1.jpg", "pug", ("A small dog.",)),
               ImageRecord("boxer_1", "boxer_1.jpg", "boxer", ("A boxer in snow.",)),
               ImageRecord("beagle_1", "beagle_1.jpg", "beagle", ("A beagle at home.",))]
    cleaned, report = clean_negatives(records, ["pug", "boxer", "beagle"], k=2)
    check_invariants(records, cleaned, report, 2)
    assert report.records_without_class_mention == 1
    assert sorted(n.text for n in cleaned[0].negatives) == ["A pug at home.", "A pug in snow."]


def test_clean_glued_mentions_block_class_swaps() -> None:
    records = [ImageRecord("w_1", "w_1.jpg", "watch", ("A watch: a gold wristwatch.",)),
               ImageRecord("c_1", "c_1.jpg", "cup", ("Two cups and a saucer.",)),
               ImageRecord("a_1", "a_1.jpg", "ant", ("An ant-like robot.",))]
    cleaned, report = clean_negatives(records, ["watch", "cup", "ant"], k=2)
    check_invariants(records, cleaned, report, 2)
    assert report.records_class_glued == 1  # "wristwatch" would still name the watch
    cup_swaps = {n.text for n in cleaned[1].negatives if n.kind is NegativeKind.CLASS_SWAP}
    assert cup_swaps <= {"Two watchs and a saucer.", "Two ants and a saucer."}  # plural kept
    assert all(n.kind is NegativeKind.ATTRIBUTE_SWAP for n in cleaned[0].negatives)


def test_clean_never_swaps_in_a_class_containing_the_true_one() -> None:
    records = [ImageRecord("r_1", "r_1.jpg", "rose", ("This is a rose.Red.",))]
    cleaned, report = clean_negatives(records, ["rose", "desert-rose", "lenten_rose", "tulip"], k=3,
                                      attribute_swap=False)
    check_invariants(records, cleaned, report, 3)
    assert [n.text for n in cleaned[0].negatives] == ["This is a tulip.Red."]
    assert report.rejected_candidates == 2 and report.missing_negatives == 2


def test_clean_rejects_bad_arguments() -> None:
    records = domain_records()
    with pytest.raises(ValueError, match="outside `classes`.*'pug_0'"):
        clean_negatives(records, ["Persian", "Siamese", "basset_hound"])
    with pytest.raises(ValueError, match="k must be"):
        clean_negatives(records, CLASSES, k=-1)
    with pytest.raises(ValueError, match="classes is empty"):
        clean_negatives(records, [])
    karpathy = ImageRecord("1", "a.jpg", None, ("A dog.",))
    with pytest.raises(ValueError, match="'1'"):
        clean_negatives([karpathy], ["dog"])


def test_clean_k_zero_drops_everything() -> None:
    shipped = (Negative("A boxer.", "boxer", "shipped"),)
    record = ImageRecord("pug_1", "pug_1.jpg", "pug", ("A pug.",), shipped)
    cleaned, report = clean_negatives([record], ["pug", "boxer"], k=0)
    assert cleaned[0].negatives == () and report.dropped_surplus == 1


# ---------------------------------------------------------------------------------------------
# record types


def test_image_record_validation() -> None:
    record = ImageRecord("1", "a/b.jpg", None, ["A dog."])  # type: ignore[arg-type]
    assert record.captions == ("A dog.",)
    with pytest.raises(ValueError, match="record '1'.*absolute"):
        ImageRecord("1", "/a.jpg", None, ("A dog.",))
    with pytest.raises(ValueError, match="at least one caption"):
        ImageRecord("1", "a.jpg", None, ())
    with pytest.raises(ValueError, match="kind must be one of"):
        Negative("A cat.", "cat", "hard")
    assert Negative("A cat.", "cat", "class_swap").kind is NegativeKind.CLASS_SWAP


# ---------------------------------------------------------------------------------------------
# fuzzing: any input gives records or a ValueError


_json_scalars = (st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False)
                 | st.text(max_size=8))
_json = st.recursive(_json_scalars, lambda inner: st.lists(inner, max_size=3)
                     | st.dictionaries(st.text(max_size=6), inner, max_size=3), max_leaves=12)
_names = (st.sampled_from(["a", "a.jpg", "b/c.png", "/a", "../a", "", "C:x", "b\\..\\c"])
          | st.text(max_size=6))
_texts = (st.sampled_from(["A pug.", "A Pug pug.", "pug_1", "This is a pug.x", "", " "])
          | st.text(max_size=12))
_record = st.fixed_dictionaries(
    {"file_name": _names, "positive": _texts, "negative": st.lists(_texts, max_size=4)},
    optional={"class_name": _texts, "number": _json_scalars, "file_path": _names},
)
_good_texts = st.sampled_from(["A pug.", "A Pug pug.", "This is a pug.x", "A b_c and a B C."])
_good_record = st.fixed_dictionaries(  # parses when the key gives a class
    {"file_name": st.sampled_from(["a", "a.jpg", "b/c.png", "1514522"]), "positive": _good_texts,
     "negative": st.lists(_good_texts, max_size=4)},
    optional={"class_name": st.sampled_from(["pug", "b_c", "B C", "x"]), "number": _json_scalars,
              "file_path": _names},
)


def _mutations(record: dict) -> st.SearchStrategy[dict]:
    """The record with one field replaced by any JSON value, or removed."""
    field = st.sampled_from(sorted(record))
    replaced = st.tuples(field, _json).map(lambda kv: {**record, kv[0]: kv[1]})
    removed = field.map(lambda key: {k: v for k, v in record.items() if k != key})
    return replaced | removed


_keys = st.sampled_from(["pug_1", "pug_2", "beagle_10", "pug", "_1", "a_b_3"]) | st.text(max_size=8)
_files = (st.dictionaries(_keys, _good_record, min_size=1, max_size=4)
          | st.dictionaries(_keys, _record | _good_record.flatmap(_mutations) | _json, max_size=4)
          | _json)


@settings(max_examples=300, deadline=None)
@given(data=_files)
def test_parser_fuzz_records_or_value_error(data: object) -> None:
    try:
        records, report = parse_fdrd(data, "fuzz.json")
    except ValueError as err:
        assert str(err).startswith("fuzz.json")
        return
    assert isinstance(data, dict) and len(records) == len(data) == report.n_records
    for record in records:
        assert not record.file_name.startswith(("/", "\\"))
        assert ".." not in record.file_name.replace("\\", "/").split("/")


@settings(max_examples=200, deadline=None)
@given(text=st.text(max_size=40) | _files.map(json.dumps))
def test_json_text_fuzz_value_error_only(text: str) -> None:
    try:
        data = parse_json_text(text, "fuzz.json", reject_duplicate_keys=True)
    except ValueError as err:
        assert str(err).startswith("fuzz.json")
        return
    try:
        parse_fdrd(data, "fuzz.json")
    except ValueError:
        pass


_class_names = st.lists(st.sampled_from(["ab", "abc", "b_c", "B C", "rose", "desert-rose", "x"]),
                        min_size=1, max_size=5, unique=True)


@settings(max_examples=100, deadline=None)
@given(classes=_class_names, data=st.data())
def test_clean_negatives_fuzz_invariants(classes: list[str], data: st.DataObject) -> None:
    n = data.draw(st.integers(1, 6))
    records = []
    for i in range(n):
        cls = data.draw(st.sampled_from(classes))
        word = data.draw(st.sampled_from([cls, cls.upper(), cls.replace("_", " "), "thing"]))
        tail = data.draw(st.sampled_from(["", " and abc", " rosebud", " " + cls + "s"]))
        choices = [f"A {word}{tail}.", "A abc.", "A x.", "A rose."]
        shipped = data.draw(st.lists(st.sampled_from(choices), max_size=4))
        records.append(ImageRecord(f"r{i}", f"r{i}.jpg", cls, (f"A {word}{tail}.",),
                                   tuple(Negative(t, "", "shipped") for t in shipped)))
    k = data.draw(st.integers(0, 4))
    cleaned, report = clean_negatives(records, classes, k=k, seed=data.draw(st.integers(0, 3)),
                                      attribute_swap=data.draw(st.booleans()))
    check_invariants(records, cleaned, report, k)


# ---------------------------------------------------------------------------------------------
# the real FDRD files (skipped when ../shared/fdrd/captions is absent)

# README table: (records, classes, schema) and the defect counts where our definitions coincide
# with the README's; all cells coincide (see FdrdReport's docstring for the definitions).
README_FILES = {
    "flower_test.json": (2463, 102, "A"),
    "pets_test.json": (3669, 37, "B"),
    "plane_test.json": (3333, 100, "B"),
    "inter_caltech-101_train.json": (5777, 100, "C"),
    "inter_caltech-101_test.json": (2465, 100, "C"),
    "inter_car_train.json": (8144, 196, "C"),
}
README_DEFECTS = {  # identical (records), names true class, duplicate records, names other, lacks
    "flower_test.json": (263, 96, 188, 202, 0, 0),
    "pets_test.json": (362, 344, 106, 581, 4, 6),
    "plane_test.json": (40, 10, 20, 207, 6, 85),
}


@pytest.fixture(scope="module")
def real_fdrd():
    """Load each real file at most once per module."""
    if not CAPTIONS.is_dir():
        pytest.skip(f"FDRD caption files not found at {CAPTIONS}")
    cache: dict[str, tuple] = {}

    def load(name: str) -> tuple:
        if name not in cache:
            cache[name] = load_fdrd_json(CAPTIONS / name)
        return cache[name]

    return load


@pytest.mark.parametrize("name", sorted(README_FILES))
def test_real_file_shape(real_fdrd, name: str) -> None:
    records, report = real_fdrd(name)
    n_records, n_classes, schema = README_FILES[name]
    assert (report.n_records, report.n_classes) == (n_records, n_classes)
    assert report.schemas == ((schema, n_records),)
    assert len({r.image_id for r in records}) == n_records
    assert all(r.file_name.endswith(".jpg") and "/" not in r.file_name for r in records)


@pytest.mark.parametrize("name", sorted(README_DEFECTS))
def test_real_file_defects_match_readme(real_fdrd, name: str) -> None:
    _, report = real_fdrd(name)
    got = (report.negatives_identical.count, report.records_with_identical_negative.count,
           report.negatives_naming_true_class.count, report.records_with_duplicate_negatives.count,
           report.positives_naming_other_class.count, report.positives_lacking_class.count)
    assert got == README_DEFECTS[name]


def test_real_file_ties_and_fgvc_slash_names(real_fdrd) -> None:
    """Our extra counts: identical positives shared by several images (not in the README
    table), and the FGVC classes whose '_' stands for '/' (F-16A_B is written "F-16A/B"):
    counted as lacking their class, as in the README (66 of plane's 85)."""
    shared = {name: real_fdrd(name)[1].records_sharing_positive.count for name in README_DEFECTS}
    assert shared == {"flower_test.json": 57, "pets_test.json": 12, "plane_test.json": 60}
    records, _ = real_fdrd("plane_test.json")
    slash = [r for r in records if r.class_name in ("F-16A_B", "F_A-18")]
    lacking = sum(not mentions_class(r.captions[0], str(r.class_name)) for r in slash)
    assert lacking == len(slash) == 66


@pytest.mark.parametrize("name", ["pets_test.json", "inter_caltech-101_test.json"])
def test_real_file_cleaning(real_fdrd, name: str) -> None:
    records, _ = real_fdrd(name)
    classes = sorted({str(r.class_name) for r in records})
    cleaned, report = clean_negatives(records, classes, k=4, seed=0)
    check_invariants(records, cleaned, report, 4)
    assert report.records_short == 0
    if name == "pets_test.json":
        assert (report.dropped_identical, report.dropped_names_true_class) == (362, 106)
        assert report.records_without_class_mention == 6

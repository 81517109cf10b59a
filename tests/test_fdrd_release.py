"""FDRD as users hold it: the released caption names in FDRD/{train,test} or flat, CoOp's image
layout, every record schema through the real CLI; food101's missing train file; a whole domain
added from the command line; and `check_data`, on a fake release and on the real caption files."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from PIL import Image

from dualprompt.data import load_fdrd_json
from dualprompt.training.data_check import check_dataset, token_counter
from dualprompt.training.schema import DatasetConfig, DomainConfig
from tests.conftest import write_tiny_model
from tests.fake_release import PER_CLASS, RELEASE, write_release
from tests.toy_data import CLASSES

SHARED = Path(__file__).resolve().parents[2] / "shared" / "fdrd" / "captions"


@pytest.fixture(scope="module")
def release(tmp_path_factory, tiny_config_file):
    tmp = tmp_path_factory.mktemp("release")
    data, fdrd = write_release(tmp / "sorted")
    flat_data, flat_fdrd = write_release(tmp / "flat", flat=True)
    model_config, weights = write_tiny_model(tmp)
    conf = tmp / "conf" / "model"
    conf.mkdir(parents=True)
    (conf / "tiny.yaml").write_text(f"name: {model_config.stem}\npretrained: {weights}\n"
                                    f"config_file: {model_config}\n")
    return {"tmp": tmp, "data": data, "fdrd": fdrd, "flat_data": flat_data,
            "flat_fdrd": flat_fdrd, "conf": tmp / "conf"}


def cli(module: str, release: dict, run_dir: Path, *overrides: str, check: bool = True):
    cmd = [sys.executable, "-m", module, f"hydra.searchpath=[file://{release['conf']}]",
           "model=tiny", "trainer=cpu", "trainer.enable_progress_bar=false", "trainer.max_epochs=1",
           "data.batch_size=4", "data.num_workers=0", "logger=none", f"hydra.run.dir={run_dir}",
           *overrides]
    proc = subprocess.run(cmd, cwd=release["tmp"], capture_output=True, text=True, timeout=600,
                          env={**os.environ, "HYDRA_FULL_ERROR": "0"})
    if check:
        assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return proc


TEST_RECORDS = len(CLASSES) * PER_CLASS["test"]


@pytest.mark.parametrize("domain", [
    "caltech101", pytest.param("flowers102", marks=pytest.mark.slow),
    pytest.param("oxford_pets", marks=pytest.mark.slow)])
def test_a_released_domain_trains_and_evaluates_every_test_record(release, domain):
    """The inter_* schema (caltech101) by default, both other schemas in the slow run."""
    run_dir = release["tmp"] / f"run_{domain}"
    cli("dualprompt.train", release, run_dir, f"dataset={domain}",
        f"dataset.root={release['data']}", f"dataset.captions={release['fdrd']}")
    results = json.loads((run_dir / "results.json").read_text())
    assert set(results["test"]) == {domain, "AVG"}
    assert results["data"]["images"][domain]["test"] == TEST_RECORDS  # every test record
    splits = results["data_check"]["domains"][domain]["splits"]
    assert splits["test"]["images_missing"] == 0 and splits["test"]["records"] == TEST_RECORDS
    expected = "test" if domain != "caltech101" else ""  # caltech's test file is the flat one
    assert Path(splits["test"]["file"]).parent == release["fdrd"] / expected


def test_the_flat_layout_is_found_too(release):
    """The earlier revisions, all caption files in one folder: same records, same images."""
    cfg = _fdrd_config(release["flat_data"], release["flat_fdrd"], list(RELEASE))
    report = check_dataset(cfg, lambda text: len(text.split()) + 2, 77)
    assert report["problems"] == []
    for domain in RELEASE:
        for split, n in (("train", len(CLASSES) * PER_CLASS["train"]), ("test", TEST_RECORDS)):
            checked = report["domains"][domain]["splits"][split]
            assert (checked["records"], checked["images_found"]) == (n, n)
            assert Path(checked["file"]).parent == release["flat_fdrd"]


def test_food101_says_no_train_captions_were_released(release):
    proc = cli("dualprompt.train", release, release["tmp"] / "food", "dataset=food101",
               f"dataset.root={release['data']}", f"dataset.captions={release['fdrd']}",
               check=False)
    assert proc.returncode == 1
    assert ("no train caption file (dataset.domains.food101.train is null). FDRD released no "
            "food-101 train captions (only inter_food_test.json). Use it as a test domain "
            "(dataset.test_domains, e.g. dataset=fdrd_cross)") in proc.stderr


@pytest.mark.slow
def test_a_whole_domain_from_the_command_line(release):
    run_dir = release["tmp"] / "mine"
    cli("dualprompt.train", release, run_dir, "dataset=fdrd", "dataset.name=mine",
        f"dataset.root={release['data']}",
        f"+dataset.domains.mine={{train: {release['fdrd']}/train/pets_train.json, "
        f"test: {release['fdrd']}/test/pets_test.json, images: oxford_pets}}",
        "dataset.train_domains=[mine]", "dataset.test_domains=[mine]")
    results = json.loads((run_dir / "results.json").read_text())
    assert results["data"]["images"]["mine"]["test"] == TEST_RECORDS


def test_a_misspelled_domain_key_names_it():
    with pytest.raises(ValueError, match=r"dataset.domains.mine: unknown key\(s\) \['tset'\]"):
        DatasetConfig(name="x", root=".", domains={"mine": {"train": "a.json", "tset": "b"}})


def test_check_data_exits_non_zero_naming_a_deleted_image(release, tmp_path):
    data = tmp_path / "DATA"
    shutil.copytree(release["data"], data)
    victim = next((data / "oxford_pets" / "images").glob("*.jpg"))
    victim.unlink()
    proc = subprocess.run(
        [sys.executable, "-m", "dualprompt.check_data", "dataset=oxford_pets",
         f"dataset.root={data}", f"dataset.captions={release['fdrd']}",
         f"hydra.run.dir={tmp_path / 'check'}"], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 1, proc.stderr[-2000:]
    out = proc.stdout + proc.stderr
    assert f"oxford_pets train: 1 images missing, e.g. {victim.stem}" in out \
        or f"oxford_pets test: 1 images missing, e.g. {victim.stem}" in out
    report = json.loads((tmp_path / "check" / "data_check.json").read_text())
    splits = report["domains"]["oxford_pets"]["splits"].values()
    assert sum(s["images_missing"] for s in splits) == 1


# From ../shared/fdrd/README.md: identical negatives (and their records), negatives naming the
# true class, records with duplicate negatives, positives naming another class, lacking their own.
README = {"flowers102": ("flower_test.json", 263, 96, 188, 202, 0, 0),
          "oxford_pets": ("pets_test.json", 362, 344, 106, 581, 4, 6),
          "fgvc_aircraft": ("plane_test.json", 40, 10, 20, 207, 6, 85)}


@pytest.mark.skipif(not SHARED.is_dir(), reason="../shared/fdrd is not beside this clone")
def test_check_data_reports_the_readme_defect_table_of_the_real_files(tmp_path, tokenizer):
    domains = {}
    for domain, (file, *_) in README.items():
        records, _ = load_fdrd_json(SHARED / file)
        for r in records:  # placeholder images where the records point
            path = tmp_path / domain / r.file_name
            path.parent.mkdir(parents=True, exist_ok=True)
            Image.new("RGB", (2, 2)).save(path, format="JPEG")
        domains[domain] = DomainConfig(test=file, images=domain)
    cfg = DatasetConfig(name="fdrd", root=str(tmp_path), captions=str(SHARED), domains=domains,
                        test_domains=list(README))
    report = check_dataset(cfg, token_counter(tokenizer), 77)
    assert report["problems"] == []
    for domain, (_, identical, identical_records, naming, dups, other, lacking) in README.items():
        checked = report["domains"][domain]["splits"]["test"]
        assert checked["images_missing"] == 0
        d = checked["caption_defects"]
        assert (d["negatives_identical"], d["records_with_identical_negative"],
                d["negatives_naming_true_class"], d["records_with_duplicate_negatives"],
                d["positives_naming_other_class"], d["positives_lacking_class"]) == (
            identical, identical_records, naming, dups, other, lacking)
        assert sum(checked["caption_tokens"].values()) == checked["records"]


def _fdrd_config(data: Path, fdrd: Path, domains: list[str]) -> DatasetConfig:
    from hydra import compose, initialize_config_dir

    import dualprompt
    from omegaconf import OmegaConf
    from dualprompt.training.schema import register_configs
    register_configs()
    with initialize_config_dir(config_dir=str(Path(dualprompt.__file__).parent / "conf"),
                               version_base=None):
        cfg = compose(config_name="train", overrides=[
            "dataset=fdrd", f"dataset.root={data}", f"dataset.captions={fdrd}",
            f"dataset.train_domains=[{','.join(domains)}]",
            f"dataset.test_domains=[{','.join(domains)}]"])
    return OmegaConf.to_object(cfg).dataset

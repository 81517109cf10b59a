"""Every shipped config composes against the structured schemas; typos fail at compose time."""
from __future__ import annotations

import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from hydra.errors import ConfigCompositionException
from omegaconf import OmegaConf

import dualprompt
from dualprompt.training.schema import EmbedConfig, EvaluateConfig, TrainConfig, register_configs

CONF = Path(dualprompt.__file__).parent / "conf"
DATASETS = sorted(p.stem for p in (CONF / "dataset").glob("*.yaml") if not p.stem.endswith("_base"))
FDRD_DOMAINS = ["caltech101", "oxford_pets", "stanford_cars", "flowers102", "food101",
                "fgvc_aircraft", "sun397", "dtd", "ucf101"]


def _compose(config_name: str, overrides: list[str]):
    register_configs()
    with initialize_config_dir(config_dir=str(CONF), version_base=None):
        return compose(config_name=config_name, overrides=overrides)


def test_the_benchmark_configs_exist():
    assert {"fdrd", "fdrd_cross", "flickr30k", "coco", *FDRD_DOMAINS} <= set(DATASETS)


@pytest.mark.parametrize("dataset", DATASETS)
def test_every_dataset_config_composes_into_the_schema(dataset):
    # dataset=custom names its files on the command line: compose it with two
    own = (["dataset.train_data=/d/train.csv", "dataset.test_data=/d/test.jsonl"]
           if dataset == "custom" else [])
    cfg = OmegaConf.to_object(_compose("train", [f"dataset={dataset}", *own]))
    assert isinstance(cfg, TrainConfig)
    ds = cfg.dataset
    assert ds.name == dataset and ds.test_domains
    assert set(ds.train_domains + ds.test_domains) <= set(ds.domains)


def test_custom_data_becomes_one_domain_of_its_files():
    ds = OmegaConf.to_object(_compose("train", [
        "dataset=custom", "dataset.train_data=/d/train.csv", "dataset.test_data=/d/test.jsonl",
        "dataset.class_key=label"])).dataset
    assert ds.train_domains == ds.test_domains == ["custom"] and ds.root == "/d"
    dom = ds.domains["custom"]
    assert (dom.train, dom.test, dom.format) == ("/d/train.csv", "/d/test.jsonl", "csv")
    with pytest.raises(Exception, match="cannot tell the format from the suffix '.parquet'"):
        OmegaConf.to_object(_compose("train", ["dataset=custom",
                                               "dataset.train_data=/d/train.parquet"]))


def test_fdrd_in_domain_and_cross_domain_splits():
    fdrd = OmegaConf.to_object(_compose("train", ["dataset=fdrd"])).dataset
    assert fdrd.test_domains == FDRD_DOMAINS
    # food101 has no released train captions: a test domain only, here and cross-domain
    assert fdrd.train_domains == [d for d in FDRD_DOMAINS if d != "food101"]
    assert fdrd.domains["food101"].train is None and "food-101" in fdrd.domains["food101"].note
    cross = OmegaConf.to_object(_compose("train", ["dataset=fdrd_cross"])).dataset
    assert set(cross.train_domains).isdisjoint(cross.test_domains)
    assert set(cross.train_domains) | set(cross.test_domains) == set(FDRD_DOMAINS)
    assert "food101" in cross.test_domains
    # every caption file has a name the release used
    released = {"inter_caltech-101_train.json", "inter_caltech-101_test.json", "pets_train.json",
                "pets_test.json", "inter_car_train.json", "car_test.json", "flower_train.json",
                "flower_test.json", "inter_food_test.json", "plane_train.json", "plane_test.json",
                "inter_sun397_train.json", "inter_sun397_test.json", "inter_dtd_train.json",
                "inter_dtd_test.json", "inter_ucf101_train.json", "inter_ucf101_test.json"}
    names = {getattr(d, s) for d in fdrd.domains.values() for s in ("train", "test")} - {None}
    assert names == released


@pytest.mark.parametrize("group", ["method", "prompt", "loss", "optim", "trainer", "logger",
                                   "model"])
def test_every_group_option_composes(group):
    for option in sorted(p.stem for p in (CONF / group).glob("*.yaml")):
        OmegaConf.to_object(_compose("train", [f"{group}={option}"]))


def test_evaluate_config_composes():
    assert isinstance(OmegaConf.to_object(_compose("evaluate", ["dataset=coco"])), EvaluateConfig)


def test_embed_config_composes_and_rejects_typos():
    cfg = OmegaConf.to_object(_compose("embed", ["input=images/", "model=vit_b_32", "faiss=true"]))
    assert isinstance(cfg, EmbedConfig) and cfg.faiss and cfg.modalities == ["image", "text"]
    with pytest.raises(ConfigCompositionException):
        _compose("embed", ["input=x", "fais=true"])


@pytest.mark.parametrize("override", ["dataset.rooot=/x", "prompt.n_ctx=4", "loss.lamda=2",
                                      "optim.lr=fast", "trainer.max_epoch=3"])
def test_misspelled_keys_and_wrong_types_fail_at_compose_time(override):
    with pytest.raises(ConfigCompositionException):
        _compose("train", [override])


def test_invalid_prompt_values_fail_before_training():
    cfg = _compose("train", ["prompt.attribute_length=-1"])
    with pytest.raises(ValueError, match="PromptConfig.attribute_length"):
        OmegaConf.to_object(cfg)


def test_cli_prints_the_composed_config_from_any_folder(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "dualprompt.train", "dataset=fdrd", "--cfg",
                           "job"], cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    job = OmegaConf.create(proc.stdout)
    assert job.dataset.name == "fdrd" and job.dataset.domains.oxford_pets.test
    assert not list(tmp_path.iterdir())  # --cfg job writes nothing


def test_wheel_ships_the_configs(tmp_path):
    root = Path(__file__).resolve().parents[1]
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation",
                    "-q", "-w", str(tmp_path), str(root)], check=True, capture_output=True,
                   timeout=300)
    wheel, = tmp_path.glob("dualprompt-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    shipped = {f"dualprompt/conf/{p.relative_to(CONF).as_posix()}" for p in CONF.rglob("*.yaml")}
    assert "dualprompt/conf/train.yaml" in shipped and shipped <= names


def test_fdrd_recipe_commands_compose_and_pick_their_method():
    """benchmarks/fdrd/run.sh: each line composes (GPU trainer included) into its method."""
    script = Path(__file__).resolve().parents[1] / "benchmarks" / "fdrd" / "run.sh"
    lines = [line for line in script.read_text().splitlines()
             if line.startswith("python -m dualprompt.train")]
    common = ["dataset=fdrd", "model=vit_b_32", "trainer=gpu", "trainer.precision=bf16-mixed",
              "logger=csv"]
    methods = {p.stem for p in (CONF / "method").glob("*.yaml")}
    assert len(lines) == len(methods)
    for line in lines:
        method = line.split()[3].split("=")[1]
        cfg = OmegaConf.to_object(_compose("train", [f"method={method}", *common]))
        assert cfg.method.name == method and cfg.model.pretrained == "openai"

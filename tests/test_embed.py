"""`python -m dualprompt.embed`: files, ids, parity with the model, FAISS, Recall@K, DDP."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from dualprompt import base_fingerprint, load_prompts
from dualprompt.cli.embed import embed
from dualprompt.loading import load_clip
from dualprompt.data.embed_inputs import InputFormat, read_inputs
from dualprompt.training.embedding import import_faiss
from dualprompt.training.schema import EmbedConfig
from tests.conftest import (PROMPTS, TINY_CFG, TINY_NAME, make_tiny_clip, write_prompt_file,
                            write_tiny_model)
from tests.toy_data import write_hydra_configs, write_toy_fdrd, write_toy_karpathy

CAPTION_LINES = "a red square with stripes\n\nA blue square with dots\n  two green squares \n"


@pytest.fixture(scope="module")
def toy(tmp_path_factory, tiny_config_file):
    """Toy FDRD data with distinct captions (no ties), a Karpathy file, a captions text file,
    tiny-model weights and a prompt file for them, and a user config dir."""
    tmp = tmp_path_factory.mktemp("embed")
    data = write_toy_fdrd(tmp / "data", unique_captions=True)
    karpathy = write_toy_karpathy(tmp / "karpathy")
    (tmp / "captions.txt").write_text(CAPTION_LINES)
    model_config, weights = write_tiny_model(tmp)
    conf = write_hydra_configs(tmp / "conf", data, model_config)
    return {"tmp": tmp, "data": data, "karpathy": karpathy, "conf": conf, "weights": weights,
            "model_config": model_config, "prompts": write_prompt_file(tmp / "prompts.safetensors")}


def run(module: str, toy: dict, run_dir: Path, *overrides: str) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", module, f"hydra.searchpath=[file://{toy['conf']}]",
           "model=tiny", f"model.pretrained={toy['weights']}", "trainer=cpu",
           "trainer.enable_progress_bar=false", "data.num_workers=0",
           f"hydra.run.dir={run_dir}", *overrides]
    proc = subprocess.run(cmd, cwd=toy["tmp"], capture_output=True, text=True, timeout=600,
                          env={**os.environ, "HF_HUB_OFFLINE": "1"})
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return proc


def has_faiss() -> bool:
    try:
        import_faiss()
    except ImportError:
        return False
    return True


@pytest.fixture(scope="module")
def caption_run(toy):
    """The CLI on the toy_a FDRD test split, with the prompt file (and FAISS when installed)."""
    out = toy["tmp"] / "fdrd_run"
    run("dualprompt.embed", toy, out, f"input={toy['data'] / 'toy_a' / 'test.json'}",
        f"image_root={toy['data'] / 'toy_a' / 'images'}", f"prompts={toy['prompts']}",
        f"faiss={str(has_faiss()).lower()}", "data.eval_batch_size=5")
    return out


@pytest.fixture(scope="module")
def reference(toy):
    """The same base CLIP, transforms and tokenizer as the CLI, and the prompted model."""
    clip = load_clip(TINY_NAME, str(toy["weights"]), config_file=str(toy["model_config"]))
    return clip, load_prompts(toy["prompts"], clip.model)


def read_ids(path: Path) -> list[str]:
    return path.read_text(encoding="utf-8").splitlines()


def assert_unit_rows(x: np.ndarray, n: int, dim: int = TINY_CFG["embed_dim"]) -> None:
    assert x.dtype == np.float32 and x.shape == (n, dim)
    np.testing.assert_allclose(np.linalg.norm(x, axis=1), 1.0, atol=1e-5)


def encode_images(model, clip, paths: list[Path]) -> np.ndarray:
    images = torch.stack([clip.preprocess_val(Image.open(p).convert("RGB")) for p in paths])
    with torch.no_grad():
        return model.encode_image(images, normalize=True).numpy()


def encode_texts(model, clip, captions: list[str]) -> np.ndarray:
    with torch.no_grad():
        return model.encode_text(clip.tokenizer(captions), normalize=True).numpy()


def test_caption_json_embeddings_equal_the_prompted_model(toy, caption_run, reference):
    clip, model = reference
    records = json.loads((toy["data"] / "toy_a" / "test.json").read_text())
    image_ids = read_ids(caption_run / "image_ids.txt")
    assert image_ids == list(records)  # file order
    assert read_ids(caption_run / "text_ids.txt") == [f"{k}#0" for k in records]
    assert read_ids(caption_run / "text_image_ids.txt") == image_ids
    images = np.load(caption_run / "image_embeddings.npy")
    texts = np.load(caption_run / "text_embeddings.npy")
    assert_unit_rows(images, len(records))
    assert_unit_rows(texts, len(records))

    folder = toy["data"] / "toy_a" / "images"
    expected = encode_images(model, clip, [folder / records[k]["file_name"] for k in records])
    np.testing.assert_allclose(images, expected, atol=1e-5)
    expected = encode_texts(model, clip, [r["positive"] for r in records.values()])
    np.testing.assert_allclose(texts, expected, atol=1e-5)

    manifest = json.loads((caption_run / "manifest.json").read_text())
    assert manifest["counts"] == {"image": 12, "text": 12}
    assert manifest["dims"] == {"image": 32, "text": 32}
    assert manifest["input"]["format"] == "fdrd"
    assert manifest["base_fingerprint"] == base_fingerprint(make_tiny_clip(seed=3))
    assert manifest["prompt_file"]["config"] == PROMPTS.to_dict()
    assert manifest["versions"]["torch"] and manifest["versions"]["open_clip_torch"]


@pytest.mark.slow  # two embed runs
def test_folder_zero_shot_and_captions_text_file(toy, reference):
    clip, model = reference
    folder = toy["karpathy"]  # images/*.png and captions.json: the folder run takes the images
    run("dualprompt.embed", toy, toy["tmp"] / "folder_run", f"input={folder}")
    ids = read_ids(toy["tmp"] / "folder_run" / "image_ids.txt")
    assert ids == sorted(f"images/{p.name}" for p in (folder / "images").glob("*.png"))
    images = np.load(toy["tmp"] / "folder_run" / "image_embeddings.npy")
    assert_unit_rows(images, 8)
    np.testing.assert_allclose(images, encode_images(clip.model, clip, [folder / i for i in ids]),
                               atol=1e-5)  # prompts=null: the zero-shot CLIP
    assert not (toy["tmp"] / "folder_run" / "text_embeddings.npy").exists()

    run("dualprompt.embed", toy, toy["tmp"] / "text_run", f"input={toy['tmp'] / 'captions.txt'}",
        f"prompts={toy['prompts']}")
    assert read_ids(toy["tmp"] / "text_run" / "text_ids.txt") == ["1", "3", "4"]  # line numbers
    texts = np.load(toy["tmp"] / "text_run" / "text_embeddings.npy")
    assert_unit_rows(texts, 3)
    captions = [line.strip() for line in CAPTION_LINES.splitlines() if line.strip()]
    np.testing.assert_allclose(texts, encode_texts(model, clip, captions), atol=1e-5)
    manifest = json.loads((toy["tmp"] / "text_run" / "manifest.json").read_text())
    assert manifest["counts"] == {"text": 3}
    assert not (toy["tmp"] / "text_run" / "image_ids.txt").exists()


def brute_force_top_k(queries: np.ndarray, gallery: np.ndarray, k: int):
    scores = queries @ gallery.T  # (Q, G)
    order = np.argsort(-scores, axis=1, kind="stable")[:, :k]  # ties: lower index first
    return np.take_along_axis(scores, order, axis=1), order


def test_faiss_top_k_equals_brute_force(caption_run):
    faiss = pytest.importorskip("faiss")
    images = np.load(caption_run / "image_embeddings.npy")
    texts = np.load(caption_run / "text_embeddings.npy")
    image_index = faiss.read_index(str(caption_run / "image.faiss"))
    text_index = faiss.read_index(str(caption_run / "text.faiss"))
    assert image_index.ntotal == len(images) and text_index.ntotal == len(texts)
    for queries, index, gallery in ((texts, image_index, images), (images, text_index, texts),
                                    (images, image_index, images)):
        scores, ids = index.search(queries, 5)
        expected_scores, expected_ids = brute_force_top_k(queries, gallery, 5)
        np.testing.assert_array_equal(ids, expected_ids)
        np.testing.assert_allclose(scores, expected_scores, atol=1e-5)


def test_recall_from_faiss_search_equals_evaluate(toy, caption_run):
    faiss = pytest.importorskip("faiss")
    run("dualprompt.evaluate", toy, toy["tmp"] / "eval", "dataset=toy",
        "dataset.test_domains=[toy_a]", f"prompts={toy['prompts']}")
    expected = json.loads((toy["tmp"] / "eval" / "results.json").read_text())["results"]["toy_a"]

    image_ids = read_ids(caption_run / "image_ids.txt")
    row = {image_id: i for i, image_id in enumerate(image_ids)}
    text_to_image = np.array([row[i] for i in read_ids(caption_run / "text_image_ids.txt")])
    images = np.load(caption_run / "image_embeddings.npy")
    texts = np.load(caption_run / "text_embeddings.npy")
    _, t2i = faiss.read_index(str(caption_run / "image.faiss")).search(texts, 5)  # (M, 5)
    _, i2t = faiss.read_index(str(caption_run / "text.faiss")).search(images, 5)  # (N, 5)
    for k in (1, 5):  # results.json holds float32 means: 1/12 is 8.3333336
        t2i_hit = (t2i[:, :k] == text_to_image[:, None]).any(1)
        i2t_hit = (text_to_image[i2t[:, :k]] == np.arange(len(images))[:, None]).any(1)
        assert 100.0 * t2i_hit.mean() == pytest.approx(expected[f"t2i_R@{k}"], abs=1e-4)
        assert 100.0 * i2t_hit.mean() == pytest.approx(expected[f"i2t_R@{k}"], abs=1e-4)
    # a random tiny model still ranks: the comparison is not between two trivial 0s or 100s
    assert 0 < expected["t2i_R@5"] < 100 or 0 < expected["i2t_R@5"] < 100


@pytest.mark.slow
def test_two_processes_write_what_one_writes(toy, caption_run):
    out = toy["tmp"] / "ddp_run"
    run("dualprompt.embed", toy, out, f"input={toy['data'] / 'toy_a' / 'test.json'}",
        f"image_root={toy['data'] / 'toy_a' / 'images'}", f"prompts={toy['prompts']}",
        "trainer.devices=2", "trainer.strategy=ddp", "data.eval_batch_size=5")  # uneven shards
    for name in ("image_ids.txt", "text_ids.txt", "text_image_ids.txt"):
        assert read_ids(out / name) == read_ids(caption_run / name)
    for name in ("image_embeddings.npy", "text_embeddings.npy"):
        np.testing.assert_allclose(np.load(out / name), np.load(caption_run / name), atol=1e-6)


# -- in-process: inputs and errors -----------------------------------------------------------
def test_read_inputs_detects_formats_and_pairs_captions(toy):
    karpathy = read_inputs(str(toy["karpathy"] / "captions.json"))
    assert karpathy.format == InputFormat.KARPATHY
    assert len(karpathy.image_ids) == 8 and len(karpathy.captions) == 24
    assert karpathy.text_image_ids[:4] == ["0", "0", "0", "1"]
    assert karpathy.text_ids[:2] == ["0#0", "0#1"]
    assert len(read_inputs(str(toy["karpathy"] / "captions.json"), split="test").image_ids) == 8
    with pytest.raises(ValueError, match="no records in split 'val'"):
        read_inputs(str(toy["karpathy"] / "captions.json"), split="val")
    assert read_inputs(str(toy["data"] / "toy_a" / "test.json"),
                       image_root=str(toy["data"] / "toy_a")).format == InputFormat.FDRD
    assert read_inputs(str(toy["karpathy"])).format == InputFormat.IMAGES
    assert read_inputs(str(toy["tmp"] / "captions.txt")).format == InputFormat.TEXT
    with pytest.raises(ValueError, match="format must be one of"):
        read_inputs(str(toy["karpathy"]), "jpeg")


def test_missing_images_are_an_error_unless_skipped(toy, tmp_path):
    records = json.loads((toy["data"] / "toy_a" / "test.json").read_text())
    records["ghost"] = {**records["alpha_test_000"], "file_name": "ghost.png"}
    path = tmp_path / "test.json"
    path.write_text(json.dumps(records))
    images = str(toy["data"] / "toy_a" / "images")
    with pytest.raises(FileNotFoundError, match="1 of 13 images not found.*'ghost'"):
        read_inputs(str(path), image_root=images)
    inputs = read_inputs(str(path), image_root=images, skip_missing_images=True)
    assert inputs.skipped_images == 1 and "ghost" not in inputs.text_image_ids
    assert len(inputs.image_ids) == len(inputs.captions) == 12


def test_bad_modalities_and_missing_faiss_fail_before_any_work(toy, tmp_path, monkeypatch):
    with pytest.raises(ValueError, match="modalities"):
        embed(EmbedConfig(input=str(toy["karpathy"]), modalities=["audio"]), tmp_path)
    with pytest.raises(ValueError, match="nothing to embed"):
        embed(EmbedConfig(input=str(toy["karpathy"]), modalities=["text"]), tmp_path)
    monkeypatch.setitem(sys.modules, "faiss", None)  # as if faiss-cpu were not installed
    with pytest.raises(ImportError, match=r"pip install 'dualprompt\[faiss\]'"):
        embed(EmbedConfig(input=str(toy["karpathy"]), faiss=True), tmp_path)

"""The offline default end to end: a reduced world and a reduced pretraining, built by the
main command itself (the world recipe, 4 epochs), prompt training with its before/after table,
and a second run on the cache that ends exactly like the first. Whether the prompts beat the
frozen CLIP is a quality claim: benchmarks/quality.py measures it on the full world."""
from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import torch
from safetensors.torch import load_file


@pytest.mark.slow
def test_main_command_builds_world_pretrains_trains_and_a_cached_run_ends_identically(tmp_path):
    env = {**os.environ, "DUALPROMPT_CACHE": str(tmp_path / "cache")}
    cmd = [sys.executable, "-m", "dualprompt.train",
           "dataset.generate_args={domains:[critters],train_per_domain:384,val_per_domain:64,"
           "test_per_domain:64}",
           "model.pretrain_args={steps:60,batch_size:64,probe_images:0,eval_pairs:64}",
           "experiment=world", "trainer.max_epochs=4", "data.batch_size=32",
           "data.num_workers=0", "trainer.enable_progress_bar=false",
           f"hydra.run.dir={tmp_path / 'run'}"]
    proc = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True,
                          timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    cache = tmp_path / "cache"
    assert (cache / "world_clip" / "open_clip_model.safetensors").is_file()
    assert (cache / "world" / "critters" / "train.json").is_file()
    results = json.loads((tmp_path / "run" / "results.json").read_text())
    assert results["epochs_trained"] == 4 and results["trainable_parameters"] > 0
    assert set(results["val"]) == set(results["zero_shot_val"]) == {"critters", "AVG"}
    assert results["test"]["AVG"] != results["zero_shot"]["AVG"]  # the prompts were loaded
    log = proc.stdout + proc.stderr
    assert "| critters | zero-shot |" in log and "| critters | dualprompt |" in log  # the table
    assert "building domain" in log and "pretraining the world CLIP" in log

    # a second run reuses the cached world and CLIP (no rebuild, no pretraining) and, with the
    # same seed, ends exactly where the first run did: building the assets draws no randomness
    # from the run's generators
    proc = subprocess.run(cmd[:-1] + [f"hydra.run.dir={tmp_path / 'run2'}"],
                          cwd=tmp_path, env=env, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "pretraining the world CLIP" not in proc.stdout + proc.stderr
    assert "building domain" not in proc.stdout + proc.stderr
    again = json.loads((tmp_path / "run2" / "results.json").read_text())
    assert again["val"] == results["val"] and again["test"] == results["test"]
    first, second = (load_file(str(tmp_path / run / "prompts.safetensors")) for run in ("run", "run2"))
    assert first.keys() == second.keys()
    assert all(torch.equal(first[k], second[k]) for k in first)

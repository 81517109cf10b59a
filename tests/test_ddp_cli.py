"""Lightning DDP through the CLI on CPU (gloo, 2 processes): one run folder, rank 0 writes."""
from __future__ import annotations

import json
import subprocess
import sys

import pytest

from tests.test_train_cli import toy  # noqa: F401  (module fixture)


@pytest.mark.slow
def test_ddp_two_processes_write_one_run_folder(toy, tiny_config_file):  # noqa: F811
    cwd = toy["tmp"] / "ddp_cwd"
    cwd.mkdir()
    cmd = [sys.executable, "-m", "dualprompt.train", f"hydra.searchpath=[file://{toy['conf']}]",
           "dataset=toy", "model=tiny", f"model.pretrained={toy['weights']}",
           "trainer.accelerator=cpu", "trainer.devices=2", "trainer.strategy=ddp",
           "trainer.max_epochs=1", "trainer.enable_progress_bar=false", "data.batch_size=4",
           "data.num_workers=0", "eval_zero_shot=false"]
    proc = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    runs = list((cwd / "outputs" / "toy").iterdir())
    assert len(runs) == 1, runs  # not one folder per rank
    run = runs[0]
    assert [p.name for p in run.glob("results.json")] == ["results.json"]
    results = json.loads((run / "results.json").read_text())
    assert set(results["test"]) == {"toy_a", "toy_b", "AVG"}
    assert (run / "prompts.safetensors").is_file() and (run / "checkpoints" / "last.ckpt").is_file()
    assert "sync_dist" not in proc.stderr


@pytest.mark.slow
def test_torchrun_recipe(toy, tiny_config_file):  # noqa: F811
    """The README's torchrun recipe, on CPU: torchrun starts the ranks, Lightning joins them."""
    run_dir = toy["tmp"] / "torchrun"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
           "-m", "dualprompt.train", f"hydra.searchpath=[file://{toy['conf']}]", "dataset=toy",
           "model=tiny", f"model.pretrained={toy['weights']}", "trainer=ddp",
           "trainer.devices=2", "trainer.accelerator=cpu", "trainer.precision=32-true",
           "trainer.max_epochs=1", "trainer.enable_progress_bar=false", "data.batch_size=4",
           "data.num_workers=0", "eval_zero_shot=false", f"hydra.run.dir={run_dir}"]
    proc = subprocess.run(cmd, cwd=toy["tmp"], capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert json.loads((run_dir / "results.json").read_text())["test"]["AVG"]["rsum"] >= 0


@pytest.mark.parametrize("overrides", [
    ["trainer=gpu"],
    ["trainer=ddp", "trainer.devices=4"],
    ["trainer=ddp", "trainer.num_nodes=2", "trainer.devices=4", "hydra.run.dir=outputs/fdrd/123"],
])
@pytest.mark.slow  # a CLI process per recipe
def test_gpu_recipes_compose(tmp_path, overrides):
    """The README's GPU and SLURM recipes (no GPU here): their configs compose (--cfg job)."""
    from omegaconf import OmegaConf
    cmd = [sys.executable, "-m", "dualprompt.train", "dataset=fdrd", "dataset.root=/data/fdrd",
           "model=vit_b_32", *overrides, "--cfg", "job"]
    proc = subprocess.run(cmd, cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    job = OmegaConf.create(proc.stdout)
    assert job.trainer.accelerator == "gpu" and job.trainer.precision == "bf16-mixed"
    if "trainer.num_nodes=2" in overrides:
        assert job.trainer.num_nodes == 2 and job.trainer.strategy == "ddp"

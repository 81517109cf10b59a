"""The wandb sweep file drives the real CLI: its command, rendered the way a wandb agent
renders it, composes under Hydra (wandb sweep/agent need a server, so they are not run)."""
from __future__ import annotations

import itertools
import subprocess
import sys
from pathlib import Path

import yaml
from omegaconf import OmegaConf

SWEEP = Path(__file__).resolve().parents[1] / "benchmarks" / "sweeps" / "prompt_lengths.yaml"


def _agent_command(spec: dict, values: dict) -> list[str]:
    """What `wandb agent` runs: ${env} -> nothing here, ${args_no_hyphens} -> key=value."""
    out = []
    for part in spec["command"]:
        if part == "${env}":
            continue
        if part == "${args_no_hyphens}":
            out += [f"{k}={v}" for k, v in values.items()]
        elif part == "python":
            out.append(sys.executable)
        else:
            out.append(part)
    return out


def test_sweep_command_composes_for_a_grid_point(tmp_path):
    spec = yaml.safe_load(SWEEP.read_text())
    assert spec["metric"]["name"] == "val/AVG/rsum"
    assert "${args_no_hyphens}" in spec["command"]
    grid = {k: v["values"] for k, v in spec["parameters"].items()}
    assert len(list(itertools.product(*grid.values()))) == 32
    point = {k: v[-1] for k, v in grid.items()}
    cmd = _agent_command(spec, point) + ["--cfg", "job"]
    proc = subprocess.run(cmd, cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    job = OmegaConf.create(proc.stdout)
    for key, value in point.items():
        assert OmegaConf.select(job, key) == value
    assert job.logger.kind == "wandb"

"""benchmarks/quality.py --report-only: tables from a runs file, the task ceiling when the world
is built, and the runs' own revision kept."""
from __future__ import annotations

import importlib.util
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from dualprompt.world.ceiling import split_ceiling
from dualprompt.world.corpus import WorldConfig, build_world

REPO = Path(__file__).resolve().parents[1]
RUNS = REPO / "benchmarks" / "results" / "quality_runs_in_domain_critters.json"


def _quality_module():
    if str(REPO / "benchmarks") not in sys.path:
        sys.path.insert(0, str(REPO / "benchmarks"))  # quality.py's own import: method_overrides
    spec = importlib.util.spec_from_file_location("quality", REPO / "benchmarks" / "quality.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _report(out: Path, cache: Path) -> str:
    env = {**os.environ, "DUALPROMPT_CACHE": str(cache)}
    proc = subprocess.run([sys.executable, str(REPO / "benchmarks" / "quality.py"), "--report-only",
                           "--settings", "in-domain (critters)", "--out", str(out)],
                          env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return (out / "quality.md").read_text()


@pytest.mark.slow  # rebuilds the world and the report
@pytest.mark.skipif(not RUNS.is_file(), reason="no committed runs file")
def test_report_only_rebuilds_tables_with_the_ceiling_and_the_runs_revision(tmp_path):
    out = tmp_path / "results"
    out.mkdir()
    shutil.copy(RUNS, out / RUNS.name)
    runs = json.loads(RUNS.read_text())
    default = _quality_module().FULL  # the default method, the last row
    full = [r["test"]["i2t_R@1"] for r in runs if r["variant"] == default]
    assert full

    text = _report(out, tmp_path / "no_cache")  # no world here: no ceiling line
    assert f"| {default} | " + f"{sum(full) / len(full):.2f} +- " in text
    assert "Task ceiling" not in text
    zero = next(r["zero_shot"]["i2t_R@1"] for r in runs if r["zero_shot"])
    gain = sum(full) / len(full) - zero
    assert f"over zero-shot {gain:+.2f} / " in text  # the targets line, met or not
    verdict = text.split(f"over zero-shot {gain:+.2f} / ")[1].split(";")[0]
    assert verdict.endswith("(met)" if gain > 10 else "(not met)"), verdict
    assert (out / "quality.png").stat().st_size > 0

    meta = json.loads((out / "quality.json").read_text())["meta"]
    meta["git_revision"] = "0123abc"  # as if the runs were made at another revision
    (out / "quality.json").write_text(json.dumps({"meta": meta, "summary": {}}))
    build_world(tmp_path / "cache" / "world",
                WorldConfig(domains=("critters",), train_per_domain=4, val_per_domain=4,
                            test_per_domain=32))
    text = _report(out, tmp_path / "cache")
    top = split_ceiling(tmp_path / "cache" / "world" / "critters", "test")
    assert (f"expects test R@1 {top['i2t_R@1']:.2f} image->text / {top['t2i_R@1']:.2f} "
            "text->image") in text
    assert "git 0123abc" in text and "rebuilt with --report-only at git" in text
    assert json.loads((out / "quality.json").read_text())["meta"]["ceiling"]["in-domain (critters)"] \
        == pytest.approx(top)

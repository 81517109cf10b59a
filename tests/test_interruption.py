"""Interrupted runs lose nothing.

A run killed mid-epoch (SIGKILL: no chance to save; SIGTERM: preemption, Lightning saves) and
resumed with `hydra.run.dir=<same> ckpt_path=last` ends with the same prompts, optimizer
state and test metrics as an uninterrupted run with the same seed; a write that fails midway
leaves the previous file under its name and no temp file behind.
"""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from tests.test_train_cli import run_cli, toy  # noqa: F401  (module fixture)

# 18 training images, batch 4: 4 steps per epoch; lr high enough that every epoch moves the
# prompts (and the val metric), so that a wrong resume cannot go unnoticed. Bitwise equality
# needs the frozen-quantity cache off: a resumed run refills it in other batches than the
# uninterrupted run filled it in, and BLAS results depend on the batch's shape (a 2-row and a
# 4-row product differ in the last bits), so with the cache the runs agree to rounding only.
RUN = ("trainer.max_epochs=3", "trainer.deterministic=true", "seed=7", "optim.lr=0.05",
       "eval_zero_shot=false", "cache_frozen=false")

# The CLI with one extra callback: after `batch` of `epoch` it writes a mark file and waits
# (until SIGTERM reaches Lightning, or 120 s), so the test interrupts it mid-epoch for sure.
PAUSING_CLI = """
import os, time
from pathlib import Path
import hydra, lightning as L
from dualprompt.cli import train as cli
from dualprompt.training.schema import register_configs

EPOCH, BATCH = map(int, os.environ["PAUSE_AT"].split(","))

class Pause(L.Callback):
    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        if (trainer.current_epoch, batch_idx) == (EPOCH, BATCH):
            Path(os.environ["PAUSE_MARK"]).write_text(str(trainer.global_step))
            deadline = time.time() + 120
            while not trainer.received_sigterm and time.time() < deadline:
                time.sleep(0.02)

build = cli.build_trainer
cli.build_trainer = lambda *a, callbacks, **k: build(*a, callbacks=[*callbacks, Pause()], **k)
register_configs()
hydra.main(config_path=str(Path(cli.__file__).parents[1] / "conf"), config_name="train",
           version_base=None)(cli._main.__wrapped__)()
"""

pytestmark = pytest.mark.slow  # kills and resumes real training processes


def start_paused(toy: dict, run_dir: Path, epoch: int, batch: int, workers: int = 0,
                 run: tuple[str, ...] = RUN) -> subprocess.Popen:
    """Start a training run (in its own process group); return once it is paused after
    `batch` of `epoch`."""
    mark, log = run_dir.parent / f"{run_dir.name}.paused", run_dir.parent / f"{run_dir.name}.log"
    cmd = [sys.executable, "-c", PAUSING_CLI, f"hydra.searchpath=[file://{toy['conf']}]",
           "dataset=toy", "model=tiny", f"model.pretrained={toy['weights']}", "trainer=cpu",
           "trainer.enable_progress_bar=false", "data.batch_size=4",
           f"data.num_workers={workers}", f"hydra.run.dir={run_dir}", *run]
    with open(log, "w") as out:
        proc = subprocess.Popen(cmd, cwd=toy["tmp"], stdout=out, stderr=subprocess.STDOUT,
                                start_new_session=True,
                                env={**os.environ, "PAUSE_AT": f"{epoch},{batch}",
                                     "PAUSE_MARK": str(mark)})
    deadline = time.time() + 300
    while not mark.exists():
        if proc.poll() is not None or time.time() > deadline:
            proc.kill()
            pytest.fail(f"the run did not reach the pause: {proc.returncode}\n"
                        + log.read_text()[-3000:])
        time.sleep(0.1)
    return proc


@pytest.fixture(scope="module")
def reference(toy):  # noqa: F811
    """The uninterrupted run."""
    run_dir = toy["tmp"] / "uninterrupted"
    run_cli("dualprompt.train", toy, run_dir, *RUN)
    return run_dir


def checkpoint(run_dir: Path) -> dict:
    return torch.load(run_dir / "checkpoints" / "last.ckpt", weights_only=True)


def assert_same_run(run_dir: Path, reference: Path, **tolerance) -> None:
    """Same final checkpoint (learned tensors, optimizer state, counters), prompt file and test
    metrics; tensors bitwise unless a `tolerance` (assert_close's atol, rtol) is given."""
    got, want = checkpoint(run_dir), checkpoint(reference)
    exact = not tolerance
    tolerance = tolerance or {"atol": 0.0, "rtol": 0.0}
    assert (got["epoch"], got["global_step"]) == (want["epoch"], want["global_step"]) == (2, 12)
    assert got["state_dict"].keys() == want["state_dict"].keys()
    for name, tensor in want["state_dict"].items():
        torch.testing.assert_close(got["state_dict"][name], tensor, msg=name, **tolerance)
    got_state, want_state = (c["optimizer_states"][0]["state"] for c in (got, want))
    assert got_state.keys() == want_state.keys() and want_state
    for index, state in want_state.items():  # AdamW (the default): step, exp_avg, exp_avg_sq
        assert got_state[index].keys() == state.keys() and "exp_avg" in state
        for key, value in state.items():
            torch.testing.assert_close(got_state[index][key], value, msg=f"{index}.{key}",
                                       **tolerance)
    if not exact:  # to rounding: a validation tie may flip, and with it the best epoch that
        return     # the prompt file and the test metrics come from, so only the end state
    prompts = load_file(str(run_dir / "prompts.safetensors"))
    for name, tensor in load_file(str(reference / "prompts.safetensors")).items():
        torch.testing.assert_close(prompts[name], tensor, msg=name, **tolerance)
    results = json.loads((run_dir / "results.json").read_text())
    expected = json.loads((reference / "results.json").read_text())
    assert results["epochs_trained"] == expected["epochs_trained"] == 3
    for domain, metrics in expected["test"].items():
        assert results["test"][domain] == pytest.approx(metrics, abs=1e-4), domain


def test_sigkill_mid_epoch_then_resume_ends_like_an_uninterrupted_run(toy, reference):  # noqa: F811
    run_dir = toy["tmp"] / "sigkill"
    proc = start_paused(toy, run_dir, epoch=1, batch=1)  # 2 of epoch 1's 4 steps done
    saved = checkpoint(run_dir)
    assert (saved["epoch"], saved["global_step"]) == (0, 4)  # the end of epoch 0
    proc.send_signal(signal.SIGKILL)
    assert proc.wait(timeout=60) == -signal.SIGKILL
    assert not (run_dir / "results.json").exists()

    proc = run_cli("dualprompt.train", toy, run_dir, *RUN, "ckpt_path=last")
    assert "Restored all states" in proc.stdout + proc.stderr
    final = checkpoint(run_dir)["state_dict"]
    assert any(not torch.equal(final[k], v) for k, v in saved["state_dict"].items())
    assert_same_run(run_dir, reference)


def test_cache_on_resume_ends_like_the_uninterrupted_run_to_rounding(toy):  # noqa: F811
    """The default (`cache_frozen=true`): the resumed run refills the frozen-quantity cache in
    other batches, so its products differ in the last bits (RUN's comment); the drift of the
    final learned tensors and optimizer state stays at rounding level, not at a lost or
    repeated step's. (The best epoch, chosen on the toy's validation split, can flip on such a
    difference, so the exported prompt file and test metrics are not compared here.)"""
    cached = (*(o for o in RUN if not o.startswith("cache_frozen=")), "cache_frozen=true")
    reference = toy["tmp"] / "uninterrupted_cached"
    run_cli("dualprompt.train", toy, reference, *cached)
    run_dir = toy["tmp"] / "sigkill_cached"
    proc = start_paused(toy, run_dir, epoch=1, batch=1, run=cached)
    proc.send_signal(signal.SIGKILL)
    assert proc.wait(timeout=60) == -signal.SIGKILL
    run_cli("dualprompt.train", toy, run_dir, *cached, "ckpt_path=last")
    assert_same_run(run_dir, reference, atol=1e-3, rtol=1e-3)


def test_sigterm_saves_mid_epoch_exits_143_and_resumes_exactly(toy, reference):  # noqa: F811
    run_dir = toy["tmp"] / "sigterm"
    proc = start_paused(toy, run_dir, epoch=1, batch=1, workers=2)
    before = (run_dir / "checkpoints" / "last.ckpt").stat().st_mtime_ns
    # to the whole process group, loader workers included, as SLURM does on preemption
    os.killpg(proc.pid, signal.SIGTERM)
    returncode = proc.wait(timeout=60)
    log = (run_dir.parent / "sigterm.log").read_text()
    assert returncode == 143, log[-3000:]  # not 0: the run did not finish
    assert "stopped by SIGTERM" in log and f"hydra.run.dir={run_dir} ckpt_path=last" in log
    assert (run_dir / "checkpoints" / "last.ckpt").stat().st_mtime_ns > before
    saved = checkpoint(run_dir)
    # it stopped at the next batch, mid-epoch (not at the epoch's end): nothing trained is lost
    assert (saved["epoch"], saved["global_step"]) == (1, 6)
    assert saved["RetrievalDataModule"] == {"epoch": 1, "batches_done": 2}
    assert not (run_dir / "results.json").exists()
    assert "DataLoader worker" not in log  # the workers left SIGTERM to the main process

    # the resumed epoch 1 trains on its last 2 batches, not on its first 2 again
    proc = run_cli("dualprompt.train", toy, run_dir, *RUN, "ckpt_path=last")
    assert "epoch 1 resumes after the 8 items it had trained on" in proc.stdout + proc.stderr
    assert_same_run(run_dir, reference)


def test_the_training_order_depends_on_seed_and_epoch_only():
    from dualprompt.data.datasets import EpochShuffle

    def order(seed, epoch, resume=None):
        sampler = EpochShuffle(18, seed, resume)
        sampler.set_epoch(epoch)
        return list(sampler)

    assert order(3, 1) == order(3, 1)  # another process, another RNG state: the same order
    assert sorted(order(3, 1)) == [(i, 1) for i in range(18)]  # (index, epoch) keys
    assert order(3, 0) != order(3, 1) and order(3, 1) != order(4, 1) != order(4, 0)
    assert order(3, 1, resume=(1, 8)) == order(3, 1)[8:] + order(3, 1)[:8]
    assert order(3, 2, resume=(1, 8)) == order(3, 2)  # only the interrupted epoch


def test_under_ddp_each_rank_deals_from_the_order_and_resumes_where_it_was():
    from lightning.fabric.utilities.distributed import DistributedSamplerWrapper
    from lightning.pytorch.utilities.data import _is_dataloader_shuffled
    from torch.utils.data import DataLoader

    from dualprompt.data.datasets import EpochShuffle

    # Lightning wraps a custom sampler without shuffling it again (shuffle=False)
    assert not _is_dataloader_shuffled(DataLoader(range(18), sampler=EpochShuffle(18, 0)))

    def ranks(resume=None):
        out = []
        for rank in (0, 1):
            sampler = DistributedSamplerWrapper(EpochShuffle(18, 3, resume), num_replicas=2,
                                                rank=rank, shuffle=False)
            sampler.set_epoch(1)  # forwarded to EpochShuffle
            out.append(list(sampler))
        return out

    full = ranks()
    assert sorted(full[0] + full[1]) == [(i, 1) for i in range(18)]
    # 2 batches of 2 done on each of 2 ranks: skip 8 items; each rank goes on with its 5th
    resumed = ranks(resume=(1, 2 * 2 * 2))
    assert [r[:4] for r in resumed] == [r[4:8] for r in full]


def test_the_caption_of_an_image_is_drawn_from_seed_epoch_and_index(tokenizer, monkeypatch):
    import dualprompt.data.datasets as data
    from dualprompt.data import ImageRecord

    monkeypatch.setattr(data, "load_sample_image", lambda sample, transform: torch.zeros(1))
    captions = tuple(f"caption number {i}" for i in range(10))
    samples = [data.Sample(ImageRecord(str(i), f"{i}.png", None, captions), Path(f"{i}.png"))
               for i in range(4)]

    def drawn(seed, key):
        pairs = data.TrainPairs(samples, None, tokenizer, num_negatives=0, seed=seed)
        return tuple(pairs[key]["tokens"].tolist())

    assert drawn(0, (2, 5)) == drawn(0, (2, 5))  # no process RNG involved
    assert drawn(0, 2) == drawn(0, (2, 0))  # a plain index is epoch 0
    assert len({drawn(0, (2, epoch)) for epoch in range(8)}) > 1  # it changes with the epoch
    assert len({drawn(seed, (2, 3)) for seed in range(8)}) > 1  # and with the seed


def test_a_failed_checkpoint_write_keeps_the_previous_checkpoint(tmp_path, monkeypatch):
    from dualprompt.training.factory import SafeCheckpointIO

    io, path = SafeCheckpointIO(), tmp_path / "checkpoints" / "last.ckpt"
    io.save_checkpoint({"step": torch.tensor(1)}, path)
    replaced = []
    real_replace = os.replace
    monkeypatch.setattr(os, "replace", lambda a, b: (replaced.append(Path(a)), real_replace(a, b)))
    io.save_checkpoint({"step": torch.tensor(2)}, path)
    assert replaced[0].parent == path.parent  # the temp file never leaves the folder

    def half_then_fail(obj, f):
        f.write(b"PK\x03\x04 half a zip")
        raise OSError("disk full")

    monkeypatch.setattr(torch, "save", half_then_fail)
    with pytest.raises(OSError, match="disk full"):
        io.save_checkpoint({"step": torch.tensor(3)}, path)
    assert torch.load(path, weights_only=True)["step"] == 2
    assert sorted(p.name for p in path.parent.iterdir()) == ["last.ckpt"]


def test_a_failed_prompt_file_write_keeps_the_previous_file(tiny_config_file, tmp_path,
                                                          monkeypatch):
    import dualprompt.prompt_file as prompt_file
    from tests.conftest import write_prompt_file

    path = write_prompt_file(tmp_path / "prompts.safetensors")
    before = path.read_bytes()

    def half_then_fail(tensors, filename, metadata=None):
        Path(filename).write_bytes(before[: len(before) // 2])
        raise OSError("killed")

    monkeypatch.setattr(prompt_file, "save_file", half_then_fail)
    with pytest.raises(OSError, match="killed"):
        write_prompt_file(path)
    assert path.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["prompts.safetensors"]


def test_a_failed_results_write_keeps_the_previous_file(tmp_path, monkeypatch):
    from dualprompt.training import results

    path = tmp_path / "results.json"
    results.write_json(path, {"test": 1})
    with pytest.raises(TypeError):
        results.write_json(path, {"test": 2, "bad": object()})  # not JSON: fails midway
    monkeypatch.setattr(os, "fsync", lambda fd: (_ for _ in ()).throw(OSError("I/O error")))
    with pytest.raises(OSError):
        results.write_json(path, {"test": 3})  # fails after the temp file is written
    assert json.loads(path.read_text()) == {"test": 1}
    assert [p.name for p in tmp_path.iterdir()] == ["results.json"]

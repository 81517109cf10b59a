"""Offline quality suite: zero-shot, the baselines (CoOp, VPT, MaPLe, CLIP-Adapter, full
fine-tuning), each ablation and the full method, in-domain and cross-domain, several seeds, on
the procedural world with its small pretrained CLIP.

    python benchmarks/quality.py                      # 3 seeds, writes benchmarks/results/
    python benchmarks/quality.py --seeds 0 --quick    # a smoke run
    python benchmarks/quality.py --tune               # each row at its validation-tuned lr/epochs
    python benchmarks/quality.py --settings "in-domain, 16 shots"   # 16 training images a class

--tune gives every row the same budget first: the lr (the row's own, x 1/3, 1, 3) x epochs
(TUNE_EPOCHS) grid, on seed 0, scored on the VALIDATION split only (test=false: the test
splits are not evaluated); each row then runs its seeds at the grid point with the best
validation RSUM. The chosen values are in quality_tuning_<setting>.json and the table.

Every row is `python -m dualprompt.train experiment=world` with config overrides (listed in
BASELINES and VARIANTS), run in-process through `dualprompt.train.train`: same data, model,
epochs, seeds and validation-only model selection for all; the numbers are test Recall@K (%).
Writes quality.json (summary), quality_runs.json (every run; finished runs are reused, so an
interrupted suite resumes), quality.md (mean +- std, trainable parameters, artifact size,
training time) and quality.png.
"""
from __future__ import annotations

import argparse
import json
import logging
import statistics
import time
from pathlib import Path

from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

import dualprompt
from dualprompt.cli.train import train
from dualprompt.training.results import git_revision, versions, write_json
from dualprompt.training.schema import register_configs
from dualprompt.world.ceiling import ceiling
from method_overrides import (ADAPTERS, CONSISTENCY, LORA_9E3, LORA_R16, NO_ADAPTERS,
                              NO_CONSISTENCY, NO_LORA, NO_TOKEN_LORA, REWEIGHTED_NEGATIVES,
                              TOKEN_LORA, UNWEIGHTED_NEGATIVES)

CONF = Path(dualprompt.__file__).parent / "conf"
SETTINGS = {"in-domain": ["dataset=world_all"], "cross-domain": ["dataset=world_cross"],
            "in-domain (critters)": ["dataset=world"],
            "in-domain, 16 shots": ["dataset=world_all", "dataset.shots=16"]}
TUNE_LR_FACTORS = (1 / 3, 1.0, 3.0)
TUNE_EPOCHS = (10, 20)
# depths are fractions of the tower (VPT-deep 1.0, MaPLe and PromptSRC 0.75): 3 of the world
# CLIP's 3 layers each, as ViT-B's 12 and 9.
# Full fine-tuning's lr was chosen on validation (critters, seed 0, val R@1 i2t/t2i): 1e-5
# 34.4/35.6, 1e-4 35.0/35.6, 1e-3 42.5/38.1; the prompt methods share experiment=world's.
BASELINES = {  # name -> overrides; "zero-shot" is read from the first run's zero_shot results
    "CoOp": ["method=coop"],
    "CoOp (class-specific)": ["method=coop_csc"],
    "KgCoOp": ["method=kgcoop"],
    "VPT-shallow": ["method=vpt"],
    "VPT-deep": ["method=vpt_deep"],
    "MaPLe": ["method=maple"],
    "PromptSRC": ["method=promptsrc"],
    "CLIP-Adapter": ["method=clip_adapter"],
    "CLIP-LoRA": ["method=clip_lora"],
    # as the committed runs before `prompt.lora_dropout` existed had it
    "CLIP-LoRA without dropout": ["method=clip_lora", "prompt.lora_dropout=0"],
    "full fine-tuning": ["method=full_finetune", "optim.lr=1e-3"],
}
# Each row of ours spells out what it holds, so that its label stays true as the default
# moves (the committed rows ran before adapters, one negative, consistency and LoRA were
# defaults).
PLAIN = [*NO_CONSISTENCY, *NO_ADAPTERS, *NO_LORA]
VARIANTS = {  # ours: the ablations, then the full method (last), which is the default
    "text prompts": ["prompt=text", "loss=contrastive", *PLAIN],
    "visual prompts": ["prompt=visual", "loss=contrastive", *PLAIN],
    "dual prompts": ["prompt=dual", "loss=contrastive", *PLAIN],
    "dual + re-weighting": ["prompt=dual", "loss=reweighting", *PLAIN],
    "full (dual + re-weighting + negatives)": [
        "prompt=dual", "loss=dcar", *PLAIN, "dataset.negatives.k=4", *UNWEIGHTED_NEGATIVES],
    # + consistency with the frozen CLIP (PromptSRC's weights), chosen on validation across
    # three world settings (benchmarks/results/recipe_search.md)
    "full + frozen-feature consistency": [
        "prompt=dual", "loss=dcar", *CONSISTENCY, *NO_ADAPTERS, "dataset.negatives.k=4",
        *UNWEIGHTED_NEGATIVES, *NO_LORA],
    # + CLIP-Adapter's feature adapters beside the prompts, one negative (validation, the same
    # three settings)
    "full + consistency + adapters, 1 negative": [
        "prompt=dual", "loss=dcar", *CONSISTENCY, *ADAPTERS, "dataset.negatives.k=1",
        *UNWEIGHTED_NEGATIVES, *NO_LORA],
    # + the negative weighted by its image as the positive is, so one weighted text pass over
    # the positives serves both losses (validation, the same three settings)
    "full + consistency + adapters, 1 re-weighted negative": [
        "prompt=dual", "loss=dcar", *CONSISTENCY, *ADAPTERS, "dataset.negatives.k=1",
        *REWEIGHTED_NEGATIVES, *NO_LORA],
    # + CLIP-LoRA's rank-2 LoRA (q, k, v, both towers) at 3x the prompts' lr (validation, four
    # world settings): the previous default
    "full + consistency + adapters + LoRA, 1 re-weighted negative": [
        "prompt=dual", "loss=dcar", *CONSISTENCY, *ADAPTERS, "dataset.negatives.k=1",
        *REWEIGHTED_NEGATIVES, *LORA_9E3, *NO_TOKEN_LORA],
    # ablation row, not the default: LoRA on the MLP too (`prompt.lora_targets`), higher on
    # validation (benchmarks/results/recipe_search.md) but a 1.06-1.11x training step
    "full + consistency + adapters + LoRA rank 16 on q, k, v and the MLP, 1 re-weighted "
    "negative": [
        "prompt=dual", "loss=dcar", *CONSISTENCY, *ADAPTERS, "dataset.negatives.k=1",
        *REWEIGHTED_NEGATIVES, *LORA_R16, "prompt.lora_targets=[q,k,v,mlp_in,mlp_out]",
        *NO_TOKEN_LORA],
    # LoRA at rank 16 (scale kept at rank 2's): validation, four world settings; the default
    # before the token embedding's LoRA
    "full + consistency + adapters + LoRA rank 16, 1 re-weighted negative": [
        "prompt=dual", "loss=dcar", *CONSISTENCY, *ADAPTERS, "dataset.negatives.k=1",
        *REWEIGHTED_NEGATIVES, *LORA_R16, *NO_TOKEN_LORA],
    # + LoRA on the token embedding (rank 8, alpha 4): validation, eight world settings; the
    # default
    "full + consistency + adapters + LoRA rank 16 + token LoRA, 1 re-weighted negative": [
        "prompt=dual", "loss=dcar", *CONSISTENCY, *ADAPTERS, "dataset.negatives.k=1",
        *REWEIGHTED_NEGATIVES, *LORA_R16, *TOKEN_LORA],
}
ROWS = {**BASELINES, **VARIANTS}
FULL = list(VARIANTS)[-1]
METRICS = ("i2t_R@1", "t2i_R@1", "i2t_R@5", "t2i_R@5", "rsum")
COSTS = ("trainable_parameters", "artifact_bytes", "train_seconds")
log = logging.getLogger("benchmarks.quality")


def compose_run(setting: str, variant: str, seed: int, extra: list[str]):
    overrides = ["experiment=world", *SETTINGS[setting], *ROWS[variant], f"seed={seed}",
                 "logger=none", "trainer.enable_progress_bar=false", *extra]
    with initialize_config_dir(config_dir=str(CONF), version_base=None):
        return overrides, OmegaConf.to_object(compose(config_name="train", overrides=overrides))


def run(setting: str, variant: str, seed: int, out: Path, extra: list[str],
        zero_shot: bool, tag: str = "") -> dict:
    overrides, cfg = compose_run(setting, variant, seed,
                                 [f"eval_zero_shot={zero_shot}", *extra])
    run_dir = out / "runs" / _slug(setting) / _slug(variant) / f"{tag}seed{seed}"
    start = time.time()
    results = train(cfg, run_dir)
    return {"setting": setting, "variant": variant, "seed": seed, "overrides": overrides,
            "test": results["test"]["AVG"] if results.get("test") else None,
            "val": results["val"]["AVG"],
            "zero_shot": results["zero_shot"]["AVG"] if zero_shot else None,
            "per_domain": results.get("test"), "epochs_trained": results["epochs_trained"],
            "trainable_parameters": results["trainable_parameters"],
            "artifact_bytes": results["artifact_bytes"], "train_seconds": results["train_seconds"],
            "seconds": round(time.time() - start, 1), "git_revision": git_revision()}


def tune(setting: str, variant: str, out: Path, extra: list[str],
         epochs_grid: tuple[int, ...] = TUNE_EPOCHS) -> dict:
    """The row's grid point with the best validation RSUM (seed 0, test never evaluated), and
    every grid point's validation numbers; resumable through quality_tuning_<setting>.json."""
    path = out / f"quality_tuning_{_slug(setting)}.json"
    tuning = json.loads(path.read_text()) if path.is_file() else {}
    key = json.dumps([variant, list(epochs_grid), extra])  # a --quick grid is not reused
    if key in tuning:
        return tuning[key]
    _, cfg = compose_run(setting, variant, 0, extra)
    grid = []
    for factor in TUNE_LR_FACTORS:
        for epochs in epochs_grid:
            point = [f"optim.lr={cfg.optim.lr * factor:.3g}", f"trainer.max_epochs={epochs}"]
            r = run(setting, variant, 0, out, [*extra, *point, "test=false"], zero_shot=False,
                    tag="tune_" + _slug(" ".join(point)) + "_")
            grid.append({"overrides": point, "val": r["val"],
                         "train_seconds": r["train_seconds"]})
            log.info("tune %s / %s / %s: val rsum %.2f", setting, variant, point,
                     r["val"]["rsum"])
    best = max(grid, key=lambda g: g["val"]["rsum"])
    tuning[key] = {"variant": variant, "chosen": best["overrides"], "grid": grid}
    write_json(path, tuning)
    return tuning[key]


def task_ceiling(setting: str) -> dict | None:
    """Expected test R@1 of a perfect attribute reader on the setting's test domains
    (dualprompt/world/ceiling.py); None when the world is not built on this machine."""
    with initialize_config_dir(config_dir=str(CONF), version_base=None):
        cfg = compose(config_name="train", overrides=["experiment=world", *SETTINGS[setting]])
    try:
        return ceiling(cfg.dataset.root, list(cfg.dataset.test_domains))  # expands ~
    except FileNotFoundError:
        return None


def _slug(name: str) -> str:
    return "_".join("".join(c if c.isalnum() else " " for c in name.lower()).split())


def summarize(runs: list[dict]) -> dict:
    rows: dict = {}
    for setting in SETTINGS:
        mine = [r for r in runs if r["setting"] == setting]
        if not mine:
            continue
        # the frozen CLIP is deterministic: one zero-shot evaluation per setting
        rows[setting] = {"zero-shot": _stats([r["zero_shot"] for r in mine if r["zero_shot"]])}
        for variant in ROWS:
            done = [r for r in mine if r["variant"] == variant]
            if done:
                rows[setting][variant] = _stats([r["test"] for r in done], done)
    return rows


def _stats(results: list[dict], runs: list[dict] = ()) -> dict:
    out = {"n": len(results), "tuned": runs[0].get("tuned", []) if runs else [],
           # runs resume across revisions; "": run before this field was recorded
           "git_revisions": sorted({r.get("git_revision") or "" for r in runs})}
    for c in COSTS:
        out[c] = statistics.fmean(r[c] for r in runs) if runs else 0
    for m in METRICS:
        values = [r[m] for r in results]
        out[m] = {"mean": statistics.fmean(values) if values else float("nan"),
                  "std": statistics.stdev(values) if len(values) > 1 else 0.0}
    return out


def markdown(summary: dict, meta: dict) -> str:
    lines = ["# Offline quality benchmark (procedural world, small pretrained CLIP)", "",
             f"Test Recall@K (%), mean +- std over seeds {meta['seeds']}; best epoch chosen on "
             "validation RSUM, never on test. Every row trains with the same data, model, "
             "schedule (`experiment=world`) and seeds"
             + (", each row at its lr x epochs grid point with the best validation RSUM "
                "(seed 0), in brackets" if meta.get("tuned") else "")
             + ". Generated by `python benchmarks/quality.py"
             + (" --tune" if meta.get("tuned") else "")
             + f"`; git {meta['git_revision']}, torch "
             f"{meta['versions']['torch']}, open_clip {meta['versions']['open_clip_torch']}"
             + (f" (tables rebuilt with --report-only at git {meta['report_git_revision']})"
                if "report_git_revision" in meta else "") + ".",
             "", "Last column: the full method minus the row, R@1 image->text / text->image, "
             "and that gap in standard deviations of the row (a gap > 2 sd is the issue's bar).",
             ""]
    for setting, rows in summary.items():
        full = rows.get(FULL)
        lines += [f"## {setting}", "",
                  "| method | " + " | ".join(METRICS) + " | trainable params | file | train s |"
                  " full - row, R@1 i2t / t2i |", "|---|" + "---:|" * (len(METRICS) + 4)]
        for variant, stats in rows.items():
            cells = " | ".join(f"{stats[m]['mean']:.2f} +- {stats[m]['std']:.2f}" for m in METRICS)
            costs = (f"{stats['trainable_parameters']:,.0f} | {_size(stats['artifact_bytes'])} | "
                     f"{stats['train_seconds']:.0f}") if variant != "zero-shot" else "0 | - | 0"
            gaps = []
            for m in ("i2t_R@1", "t2i_R@1"):
                if full is None:
                    break
                d, s = full[m]["mean"] - stats[m]["mean"], stats[m]["std"]
                gaps.append(f"{d:+.2f}" + (f" ({d / s:+.1f} sd)" if s > 0 else ""))
            runs = "" if variant == "zero-shot" or stats["n"] == len(meta["seeds"]) else \
                f" ({stats['n']} of {len(meta['seeds'])} seeds)"
            if stats.get("tuned"):  # the grid point chosen on validation
                runs += " [" + ", ".join(k.split(".")[-1] + "=" + v for k, v in
                                         (o.split("=", 1) for o in stats["tuned"])) + "]"
            lines.append(f"| {variant}{runs} | {cells} | {costs} | {' / '.join(gaps)} |")
        header = meta["git_revision"].split("+")[0]
        other = {v: revs for v, s in rows.items()  # revisions are recorded since e87b01f
                 if (revs := [r for r in s.get("git_revisions", [])
                              if r and r.split("+")[0] != header])}
        if other:
            lines += ["", "Rows run at another revision than the header's: " + "; ".join(
                f"{v}: git {', '.join(sorted({r[:12] for r in revs}))}"
                for v, revs in other.items())
                + "."]
        if full is not None:
            lines += ["", _versus_best_baseline(rows, full), "", _against_targets(rows, full)]
        top = meta.get("ceiling", {}).get(setting)
        if top:
            lines += ["", f"Task ceiling: a perfect reader of every attribute, breaking ties at "
                      f"random, expects test R@1 {top['i2t_R@1']:.2f} image->text / "
                      f"{top['t2i_R@1']:.2f} text->image here: captions leave some attributes "
                      "unsaid, so images that differ only there are the same to them "
                      "(dualprompt/world/ceiling.py)."]
        lines.append("")
    return "\n".join(lines)


def _versus_best_baseline(rows: dict, full: dict) -> str:
    """The full method against the best baseline (zero-shot included) in each direction."""
    out = []
    for m, label in (("i2t_R@1", "image->text"), ("t2i_R@1", "text->image")):
        candidates = {n: r for n, r in rows.items() if n == "zero-shot" or n in BASELINES}
        best = max(candidates, key=lambda n: candidates[n][m]["mean"])
        d = full[m]["mean"] - candidates[best][m]["mean"]
        spread = (full[m]["std"] ** 2 + candidates[best][m]["std"] ** 2) ** 0.5
        out.append(f"{label} R@1: full {full[m]['mean']:.2f} vs best baseline {best} "
                   f"{candidates[best][m]['mean']:.2f}: {d:+.2f} (combined sd {spread:.2f})")
    return "Full method vs the best baseline: " + "; ".join(out) + "."


def _against_targets(rows: dict, full: dict) -> str:
    """The issue's bars, met or not: > 10 R@1 points over zero-shot in both directions, and
    > 2 sd (of the variant) over every ablation in at least one direction."""
    r1 = ("i2t_R@1", "t2i_R@1")
    gain = [full[m]["mean"] - rows["zero-shot"][m]["mean"] for m in r1]
    out = [f"over zero-shot {gain[0]:+.2f} / {gain[1]:+.2f} "
           f"({'met' if min(gain) > 10 else 'not met'})"]
    for name in [v for v in VARIANTS if v != FULL and v in rows]:
        gaps = [(full[m]["mean"] - rows[name][m]["mean"], rows[name][m]["std"]) for m in r1]
        met = any(s > 0 and d > 2 * s for d, s in gaps)
        out.append(f"over {name} " + " / ".join(
            f"{d:+.2f}" + (f" ({d / s:.1f} sd)" if s > 0 else "") for d, s in gaps)
            + f" ({'met' if met else 'not met'})")
    return ("Targets (full method, R@1 image->text / text->image; > 10 points over zero-shot in "
            "both directions, > 2 sd over each ablation in at least one): " + "; ".join(out) + ".")


def _size(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024


def plot(summary: dict, path: Path, ceilings: dict, seeds: int) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, axes = plt.subplots(1, len(summary), figsize=(9 * len(summary), 5), squeeze=False)
    for ax, (setting, rows) in zip(axes[0], summary.items()):
        names = list(rows)
        for j, m in enumerate(("i2t_R@1", "t2i_R@1")):
            xs = [i + (j - 0.5) * 0.38 for i in range(len(names))]
            bars = ax.bar(xs, [rows[n][m]["mean"] for n in names], 0.38,
                          yerr=[rows[n][m]["std"] for n in names], capsize=3, label=m)
            if ceilings.get(setting):
                ax.axhline(ceilings[setting][m], ls="--", lw=1, color=bars.patches[0].get_facecolor(),
                           label=f"{m} task ceiling")
        labels = [n.replace(" (dual + re-weighting + negatives)", "")  # fewer seeds: marked
                  + (f" ({rows[n]['n']} of {seeds} seeds)" if n != "zero-shot"
                     and rows[n]["n"] != seeds else "") for n in names]
        ax.set_xticks(range(len(names)), labels, rotation=35, ha="right", fontsize=8)
        ax.set_title(f"{setting}: test R@1 (%)")
        # headroom above the bars and the ceiling lines, so that the legend covers neither
        tops = [rows[n][m]["mean"] + rows[n][m]["std"] for n in names
                for m in ("i2t_R@1", "t2i_R@1")]
        tops += list((ceilings.get(setting) or {}).values())
        ax.set_ylim(0, 1.4 * max(tops))
        ax.legend(ncol=2, loc="upper center", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results"))
    parser.add_argument("--settings", nargs="+", default=["in-domain", "cross-domain"],
                        choices=list(SETTINGS))
    parser.add_argument("--rows", nargs="+", default=list(ROWS), choices=list(ROWS),
                        metavar="ROW", help=f"rows to run (default all): {list(ROWS)}")
    parser.add_argument("--quick", action="store_true", help="1 epoch per run (smoke test)")
    parser.add_argument("--tune", action="store_true",
                        help="each row at its best lr x epochs grid point on validation")
    parser.add_argument("--report-only", action="store_true",
                        help="run nothing: rebuild the tables from the runs files")
    parser.add_argument("overrides", nargs="*", help="extra Hydra overrides for every run")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    register_configs()
    extra = list(args.overrides) + (["trainer.max_epochs=1"] if args.quick else [])
    prefix = "quality_tuned" if args.tune else "quality"
    runs = []
    for setting in args.settings:  # one runs file per setting: settings can run in parallel
        runs_file = args.out / f"{prefix}_runs_{_slug(setting)}.json"
        if runs_file.is_file():
            runs += [r for r in json.loads(runs_file.read_text()) if r["setting"] == setting]
        done = {(r["setting"], r["variant"], r["seed"]) for r in runs}
        for seed in args.seeds:
            for variant in args.rows:
                if (setting, variant, seed) in done or args.report_only:  # resumable
                    continue
                first = not any(r["setting"] == setting and r["zero_shot"] for r in runs)
                tuned = (tune(setting, variant, args.out, extra, (1,) if args.quick else
                              TUNE_EPOCHS)["chosen"] if args.tune else [])
                runs.append(run(setting, variant, seed, args.out, [*extra, *tuned],
                                zero_shot=first))
                runs[-1]["tuned"] = tuned
                write_json(runs_file, [r for r in runs if r["setting"] == setting])
                log.info("%s / %s / seed %d: %s", setting, variant, seed, runs[-1]["test"])
    summary = summarize([r for r in runs if r["seed"] in args.seeds])
    meta = {"seeds": args.seeds, "extra_overrides": extra, "git_revision": git_revision(),
            "versions": versions(), "ceiling": {s: task_ceiling(s) for s in summary}}
    meta["tuned"] = args.tune
    previous = args.out / f"{prefix}.json"
    if args.report_only and previous.is_file():  # the runs' revision, not this rebuild's
        made = json.loads(previous.read_text())["meta"]
        meta.update(git_revision=made["git_revision"], versions=made["versions"],
                    report_git_revision=git_revision())
    write_json(args.out / f"{prefix}.json", {"meta": meta, "summary": summary})
    (args.out / f"{prefix}.md").write_text(markdown(summary, meta))
    plot(summary, args.out / f"{prefix}.png", meta["ceiling"], len(args.seeds))
    print((args.out / f"{prefix}.md").read_text())


if __name__ == "__main__":
    main()

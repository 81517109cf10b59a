"""The targets of issue 7, and the markdown table and plot of a perf run."""
from __future__ import annotations

from pathlib import Path

DP, FT, REF = "dualprompt step", "full fine-tuning step", "reference prompt step"
OC_TEXT, DP_TEXT = "open_clip encode_text", "DualPromptCLIP encode_text"
OC_IMAGE, DP_IMAGE = "open_clip encode_image", "DualPromptCLIP encode_image"


def targets(result: dict) -> list[dict]:
    """[{name, value, target, met}] from the measured medians."""
    train = result["training"]["rows"]
    infer = result["inference"]["rows"]
    ret = result["retrieval"]

    def ratio(rows: dict, a: str, b: str) -> float:
        return round(rows[a]["median_s"] / rows[b]["median_s"], 3)

    speedup = round(ret["retrieval_hit_rate"]["median_s"] / ret["recall_at_k"]["median_s"], 1)
    peak = ret["recall_at_k"]["peak_gib"]
    peak = None if peak is None else round(peak, 3)
    rows = [
        ("dualprompt step / full fine-tuning step", ratio(train, DP, FT), "<= 0.45",
         ratio(train, DP, FT) <= 0.45),
        ("dualprompt step / reference prompt step", ratio(train, DP, REF), "<= 0.7",
         ratio(train, DP, REF) <= 0.7),
        ("DualPromptCLIP / open_clip encode_text", ratio(infer, DP_TEXT, OC_TEXT),
         "<= 1.0 (target < 1)", ratio(infer, DP_TEXT, OC_TEXT) <= 1.0),
        ("DualPromptCLIP / open_clip encode_image", ratio(infer, DP_IMAGE, OC_IMAGE), "<= 1.1",
         ratio(infer, DP_IMAGE, OC_IMAGE) <= 1.1),
        ("RetrievalHitRate time / Recall@K time", speedup, ">= 10", speedup >= 10),
        ("Recall@K vs RetrievalHitRate: queries counted differently", ret["hit_count_difference"],
         "0 (identical)", ret["hit_count_difference"] == 0),
        ("Recall@K peak memory (GiB)", peak, "< 2",
         None if peak is None else peak < 2),
    ]
    return [{"name": n, "value": v, "target": t, "met": m} for n, v, t, m in rows]


def _gib(x) -> str:
    return "n/a" if x is None else f"{x:.2f}"


def _met(m) -> str:
    return {True: "met", False: "**missed**", None: "n/a"}[m]


def markdown(result: dict) -> str:
    caps, train = result["captions"], result["training"]
    lines = [
        f"# Performance ({result['device']}, {result['precision']}, "
        f"{result['threads']} threads, {result['reps']} reps, medians)", "",
        f"{result['model']} ({result['weights']}), {result['batch']['images']} images and "
        f"{result['batch']['captions']} captions (a positive and "
        f"{result['batch'].get('negatives', 4)} negative(s) each); captions: "
        f"{caps['source']} ({'real FDRD captions' if caps['source'] == 'fdrd' else 'SYNTHETIC: recorded FDRD length distribution, ../shared absent'}), "
        f"token length in the batch mean {caps['batch']['mean']}, median "
        f"{caps['batch']['median']}, max {caps['batch']['max']} (population: mean "
        f"{caps['population']['mean']}, p95 {caps['population']['p95']}, max "
        f"{caps['population']['max']}). git {result['git_revision']}, torch "
        f"{result['versions']['torch']}, open_clip {result['versions']['open_clip_torch']}, "
        f"torchmetrics {result['versions']['torchmetrics']}.", "",
        "## Targets", "", "| ratio | measured | target | |", "|---|---:|---|---|"]
    lines += [f"| {t['name']} | {t['value']} | {t['target']} | {_met(t['met'])} |"
              for t in result["targets"]]
    ft = train["rows"][FT]["median_s"]
    ref = train["rows"][REF]["median_s"]
    lines += ["", "## Training step (forward + backward + optimizer step)", "", _stamp(train), "",
              "Prompt-step rows are cumulative: each adds one exact saving to the row above, "
              f"on {_method(result)}. Full fine-tuning (InfoNCE + the same category-aware "
              "negatives) and the frozen forward use plain open_clip at the 77-token context.",
              "",
              "| step | time (s) | x full FT | x reference | peak memory growth (GiB) | loss |",
              "|---|---:|---:|---:|---:|---:|"]
    for name, row in train["rows"].items():
        loss = train["losses"].get(name)
        lines.append(f"| {name} | {row['median_s']:.2f} | {row['median_s'] / ft:.2f} | "
                     f"{row['median_s'] / ref:.2f} | {_gib(row['peak_gib'])} | "
                     f"{'' if loss is None else f'{loss:.6f}'} |")
    lines += ["", "Where the dualprompt step's time goes (torch.profiler, self time, one step):",
              "", "| op | calls | self (s) | share |", "|---|---:|---:|---:|"]
    lines += [f"| `{p['op']}` | {p['calls']} | {p['self_s']:.2f} | {100 * p['share']:.0f}% |"
              for p in train["profile"]]
    infer = result["inference"]
    base_text = infer["rows"][OC_TEXT]["median_s"]
    base_image = infer["rows"][OC_IMAGE]["median_s"]
    lines += ["", f"## Inference (no grad; {infer['captions']} captions, {infer['images']} "
                  "images)", "", _stamp(infer), "",
              "| call | time (s) | x open_clip | peak memory growth (GiB) |",
              "|---|---:|---:|---:|"]
    for name, row in infer["rows"].items():
        base = base_text if "encode_text" in name else base_image
        lines.append(f"| {name} | {row['median_s']:.3f} | {row['median_s'] / base:.2f} | "
                     f"{_gib(row['peak_gib'])} |")
    lines.append(f"\nencode_text variants agree to {infer['encode_text_max_abs_diff_between_variants']:.1e} "
                 "(max abs difference of the features).")
    ret = result["retrieval"]
    ours, theirs = ret["recall_at_k"], ret["retrieval_hit_rate"]
    chunk = ret["torchmetrics_query_chunk"]
    lines += ["", f"## Retrieval evaluation ({ret['images']:,} images x {ret['captions']:,} "
                  f"captions, D={ret['dim']}, both directions, K = 1, 5, 10)", "", _stamp(ret), "",
              "| metric | time (s) | peak memory growth (GiB) | reps |", "|---|---:|---:|---:|",
              f"| dualprompt Recall@K (`retrieval_metrics`) | {ours['median_s']:.2f} | "
              f"{_gib(ours['peak_gib'])} | {len(ours['times_s'])} |",
              f"| torchmetrics RetrievalHitRate | {theirs['median_s']:.1f} | "
              f"{_gib(theirs['peak_gib'])} | {len(theirs['times_s'])} |", "",
              "RetrievalHitRate: one metric object per K and direction, fed the dense "
              "preds/target/indexes triple "
              + ("of every query at once" if not chunk else
                 f"{chunk} queries at a time (chunk results averaged by query count)")
              + "; its time and memory include building that triple.", "",
              "| | " + " | ".join(ours["values"]) + " |",
              "|---|" + "---:|" * len(ours["values"]),
              "| Recall@K | " + " | ".join(f"{v:.2f}" for v in ours["values"].values()) + " |",
              "| RetrievalHitRate | " + " | ".join(f"{v:.2f}" for v in theirs["values"].values())
              + " |"]
    return "\n".join(lines) + "\n"


def _method(result: dict) -> str:
    """What the prompt step trains, from the run's record (older runs did not keep it)."""
    method = result.get("method")
    if method is None:
        return "the default PromptConfig and LossConfig of the revision measured"
    p, loss = method["prompt"], method["loss"]
    parts = [f"text prompts {p['attribute_length']} + {p['subcategory_length']} and "
             f"{p['visual_length']} visual tokens in the first "
             f"{p['text_depth_fraction']} / {p['visual_depth_fraction']} of the layers"]
    if p["image_adapter_ratio"] or p["text_adapter_ratio"]:
        parts.append(f"adapters ({p['image_adapter_ratio']} / {p['text_adapter_ratio']})")
    if p["lora_rank"]:
        parts.append(f"LoRA rank {p['lora_rank']}")
    terms = ["InfoNCE"]
    if loss["category_negatives"]:
        terms.append(f"{result['batch'].get('negatives', 4)} category-aware negative(s) "
                     f"per image (lambda {loss['category_weight']})")
    if loss["reweighting"]:
        terms.append("token re-weighting" + (" of positives and negatives"
                                             if loss.get("reweight_negatives") else ""))
    if loss["text_consistency"] or loss["image_consistency"] or loss["logit_consistency"]:
        terms.append("consistency with the frozen CLIP")
    return ("the default method (conf/train.yaml): " + ", ".join(parts) + "; "
            + " + ".join(terms))


def _stamp(section: dict) -> str:
    m = section.get("measured")
    if not m:
        return "Measured in this run."
    return (f"Measured at {m['measured_at']}, {m['threads']} threads, git "
            f"{str(m['git_revision'])[:12]}.")


def plot(result: dict, path: Path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    parts = [("training step", result["training"]["rows"]),
             ("inference", result["inference"]["rows"]),
             ("Recall@K evaluation", {
                 "dualprompt Recall@K": result["retrieval"]["recall_at_k"],
                 "torchmetrics RetrievalHitRate": result["retrieval"]["retrieval_hit_rate"]})]
    fig, axes = plt.subplots(1, 3, figsize=(17, 4.5))
    for ax, (title, rows) in zip(axes, parts):
        names = list(rows)[::-1]
        values = [rows[n]["median_s"] for n in names]
        ax.barh(names, values, color=["tab:orange" if n.startswith(("dualprompt", "Dual"))
                                      else "tab:blue" for n in names])
        for y, v in enumerate(values):
            ax.text(v, y, f" {v:.2f}", va="center", fontsize=8)
        ax.set_title(title)
        ax.set_xlabel("seconds (median)")
        ax.tick_params(axis="y", labelsize=8)
    fig.suptitle(f"{result['model']}, {result['device']}, {result['threads']} threads")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)

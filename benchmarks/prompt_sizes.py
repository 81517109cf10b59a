"""Trainable parameters and prompt-file size of each `prompt=` preset on each shipped
`model=` config.

Usage: python benchmarks/prompt_sizes.py [--models vit_b_32 ...] [--out benchmarks/results]
Random init from open_clip's own configs (no downloads): sizes do not depend on the weights.
Writes prompt_sizes.{json,md}.
"""
from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

import open_clip
import torch
from hydra import compose, initialize_config_dir

import dualprompt
from dualprompt import DualPromptCLIP, PromptConfig

CONF = Path(dualprompt.__file__).parent / "conf"
# the shipped configs of released architectures (world_tiny is the offline world's own CLIP)
MODELS = ["vit_b_32", "vit_b_16", "vit_l_14", "siglip2_b16", "eva02_b16", "pe_core_b16"]


def compose_group(group: str, names: list[str]) -> dict[str, dict]:
    with initialize_config_dir(config_dir=str(CONF), version_base=None):
        return {n: dict(compose(overrides=[f"+{group}={n}"])[group]) for n in names}


def sizes(model_name: str, presets: dict[str, PromptConfig], folder: Path) -> dict:
    torch.manual_seed(0)
    clip = open_clip.create_model(model_name, pretrained=None)
    rows = {}
    for preset, config in presets.items():
        model = DualPromptCLIP(clip, config)
        path = model.save_prompts(folder / f"{model_name}-{preset}.safetensors")
        rows[preset] = {"trainable_parameters": model.num_trainable_parameters(),
                        "prompt_file_bytes": path.stat().st_size,
                        "text_depth": model.config.text_depth,
                        "visual_depth": model.config.visual_depth}
    return {"backbone_parameters": sum(p.numel() for p in clip.parameters()), "presets": rows}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=MODELS)
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results"))
    args = parser.parse_args()
    names = sorted(p.stem for p in (CONF / "prompt").glob("*.yaml") if p.stem != "none")
    presets = {n: PromptConfig(**c) for n, c in compose_group("prompt", names).items()}
    models = compose_group("model", args.models)
    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        for key, cfg in models.items():
            results[key] = {"name": cfg["name"], "pretrained": cfg["pretrained"],
                            **sizes(cfg["name"], presets, Path(tmp))}
            print(key, "done", flush=True)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "prompt_sizes.json").write_text(json.dumps(
        {"models": results, "dualprompt_version": dualprompt.__version__,
         "open_clip_version": open_clip.__version__}, indent=2))
    head = " | ".join(f"`model={k}`" for k in results)
    lines = ["Trainable parameters and prompt file (KiB) per `prompt=` preset and `model=` "
             "config (`python benchmarks/prompt_sizes.py`).", "",
             f"| preset | {head} |", "|---|" + "---:|" * len(results),
             "| frozen backbone | " + " | ".join(f"{r['backbone_parameters'] / 1e6:.1f} M"
                                                 for r in results.values()) + " |"]
    for preset in presets:
        cells = [f"{r['presets'][preset]['trainable_parameters']:,} / "
                 f"{r['presets'][preset]['prompt_file_bytes'] / 1024:,.1f}"
                 for r in results.values()]
        lines.append(f"| `{preset}` | " + " | ".join(cells) + " |")
    lines += ["", "Architectures: " + ", ".join(f"`{k}` = {r['name']} ({r['pretrained']})"
                                               for k, r in results.items()) + "."]
    (args.out / "prompt_sizes.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()

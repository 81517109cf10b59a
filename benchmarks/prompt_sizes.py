"""Trainable parameters and prompt-file size of each `prompt=` preset on ViT-B-32.

Usage: python benchmarks/prompt_sizes.py [--model ViT-B-32] [--out benchmarks/results]
Random init is enough: sizes do not depend on the weights. Writes prompt_sizes.{json,md}.
"""
from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

import open_clip
from hydra import compose, initialize_config_dir

import dualprompt
from dualprompt import DualPromptCLIP, PromptConfig

CONF = Path(dualprompt.__file__).parent / "conf"


def preset_configs() -> dict[str, PromptConfig]:
    names = sorted(p.stem for p in (CONF / "prompt").glob("*.yaml"))
    with initialize_config_dir(config_dir=str(CONF), version_base=None):
        return {n: PromptConfig(**compose(overrides=[f"+prompt={n}"]).prompt) for n in names}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="ViT-B-32")
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results"))
    args = parser.parse_args()
    clip = open_clip.create_model(args.model, pretrained=None)
    backbone = sum(p.numel() for p in clip.parameters())
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for name, config in preset_configs().items():
            model = DualPromptCLIP(clip, config)
            size = model.save_prompts(Path(tmp) / f"{name}.safetensors").stat().st_size
            rows.append({"preset": name, "trainable_parameters": model.num_trainable_parameters(),
                         "prompt_file_bytes": size})
    args.out.mkdir(parents=True, exist_ok=True)
    result = {"model": args.model, "backbone_parameters": backbone, "presets": rows,
              "dualprompt_version": dualprompt.__version__,
              "open_clip_version": open_clip.__version__}
    (args.out / "prompt_sizes.json").write_text(json.dumps(result, indent=2))
    lines = [f"Prompt presets on {args.model} ({backbone / 1e6:.1f} M frozen parameters)", "",
             "| preset | trainable parameters | prompt file |", "|---|---:|---:|"]
    lines += [f"| `prompt={r['preset']}` | {r['trainable_parameters']:,} | "
              f"{r['prompt_file_bytes'] / 1024:.1f} KiB |" for r in rows]
    (args.out / "prompt_sizes.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()

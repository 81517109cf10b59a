#!/usr/bin/env bash
# FDRD reproduction: every method on the real benchmark (nine domains, CLIP ViT-B/32, OpenAI
# weights), same data, schedule and model selection for all. Needs the FDRD caption files and
# the source datasets' images under $FDRD_ROOT (layout: dualprompt/conf/dataset/fdrd_base.yaml)
# and a GPU. One command per method; each writes runs/fdrd/<method>/results.json. Then:
#   python benchmarks/fdrd/compare.py runs/fdrd/*/results.json
# Extra arguments are passed to every command (e.g. trainer=ddp trainer.devices=4).
set -euo pipefail
: "${FDRD_ROOT:?set FDRD_ROOT to the folder holding the FDRD captions and images}"
common=(dataset=fdrd model=vit_b_32 trainer=gpu trainer.precision=bf16-mixed logger=csv "$@")

python -m dualprompt.train method=zeroshot      "${common[@]}" hydra.run.dir=runs/fdrd/zeroshot
python -m dualprompt.train method=coop          "${common[@]}" hydra.run.dir=runs/fdrd/coop
python -m dualprompt.train method=coop_csc      "${common[@]}" hydra.run.dir=runs/fdrd/coop_csc
python -m dualprompt.train method=kgcoop        "${common[@]}" hydra.run.dir=runs/fdrd/kgcoop
python -m dualprompt.train method=vpt           "${common[@]}" hydra.run.dir=runs/fdrd/vpt
python -m dualprompt.train method=vpt_deep      "${common[@]}" hydra.run.dir=runs/fdrd/vpt_deep
python -m dualprompt.train method=maple         "${common[@]}" hydra.run.dir=runs/fdrd/maple
python -m dualprompt.train method=promptsrc     "${common[@]}" hydra.run.dir=runs/fdrd/promptsrc
python -m dualprompt.train method=clip_adapter  "${common[@]}" hydra.run.dir=runs/fdrd/clip_adapter
python -m dualprompt.train method=clip_lora     "${common[@]}" hydra.run.dir=runs/fdrd/clip_lora
python -m dualprompt.train method=full_finetune "${common[@]}" hydra.run.dir=runs/fdrd/full_finetune
python -m dualprompt.train method=dualprompt    "${common[@]}" hydra.run.dir=runs/fdrd/dualprompt

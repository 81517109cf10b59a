"""CLI: `python -m dualprompt.world build|pretrain|probe`."""

from __future__ import annotations

import argparse
import json
import logging
from dataclasses import replace

from .corpus import WorldConfig, build_world
from .pretrain import PretrainConfig, ensure_pretrained_clip, pretrain_clip
from .probe import diagnose


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m dualprompt.world", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    build = sub.add_parser("build", help="write the downstream domains (FDRD JSON + PNG)")
    build.add_argument("--root", required=True, help="output folder")
    build.add_argument("--seed", type=int, default=0)
    build.add_argument("--train", type=int, default=WorldConfig.train_per_domain, help="train images per domain")
    build.add_argument("--val", type=int, default=WorldConfig.val_per_domain, help="val images per domain")
    build.add_argument("--test", type=int, default=WorldConfig.test_per_domain, help="test images per domain")
    build.add_argument("--force", action="store_true", help="rebuild even if the manifest matches")

    train = sub.add_parser("pretrain", help="pretrain the tiny CLIP (cached unless --force)")
    train.add_argument("--out", required=True, help="model folder (open_clip local-dir layout)")
    train.add_argument("--steps", type=int, default=PretrainConfig.steps)
    train.add_argument("--batch-size", type=int, default=PretrainConfig.batch_size)
    train.add_argument("--seed", type=int, default=0)
    train.add_argument("--threads", type=int, default=PretrainConfig.num_threads,
                       help="torch threads (0: the faster of 1 and 2, re-measured every 100 steps)")
    train.add_argument("--force", action="store_true", help="train even if a matching run is cached")

    probe = sub.add_parser("probe", help="linear probes and zero-shot recall of a pretrained CLIP")
    probe.add_argument("--model", required=True, help="model folder written by `pretrain`")
    probe.add_argument("--root", required=True, help="world folder written by `build`")
    probe.add_argument("--split", default="val", choices=("val", "test"))
    probe.add_argument("--out", help="write the report JSON here")

    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    if args.command == "build":
        config = WorldConfig(seed=args.seed, train_per_domain=args.train, val_per_domain=args.val,
                             test_per_domain=args.test)
        build_world(args.root, config, force=args.force)
    elif args.command == "pretrain":
        config = replace(PretrainConfig(), steps=args.steps, batch_size=args.batch_size, seed=args.seed,
                         num_threads=args.threads)
        if args.force:
            pretrain_clip(args.out, config)
        else:
            ensure_pretrained_clip(args.out, config)
    else:
        report = diagnose(args.model, args.root, args.split)
        text = json.dumps(report, indent=1)
        if args.out:
            with open(args.out, "w") as f:
                f.write(text)
        else:
            print(text)


if __name__ == "__main__":
    main()

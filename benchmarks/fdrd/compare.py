"""Put FDRD runs beside the published numbers: `python benchmarks/fdrd/compare.py RESULTS...`.

RESULTS are results.json files of `python -m dualprompt.train dataset=fdrd ...` runs (see
run.sh). Prints a markdown table: per method, the published AVG Recall@K (CLIP ViT-B/32, nine
domains; ../shared/fdrd/README.md) and the run's, with the R@1 difference. Methods the paper did
not report show "-" in the published columns.
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

# method -> (I->T R@1, R@5, R@10, T->I R@1, R@5, R@10), AVG over the nine FDRD domains
PUBLISHED = {
    "zeroshot": (27.04, 54.01, 66.50, 20.62, 45.45, 58.74),
    "coop": (33.75, 63.75, 76.27, 18.26, 41.45, 54.32),
    "maple": (35.42, 65.96, 77.82, 19.12, 43.14, 56.60),
    "fineclip": (33.68, 62.41, 74.84, 24.63, 51.43, 64.28),  # not in dualprompt
    "dualprompt": (37.65, 68.36, 80.00, 27.25, 54.06, 67.00),  # DCAR (paper)
}
KEYS = ("i2t_R@1", "i2t_R@5", "i2t_R@10", "t2i_R@1", "t2i_R@5", "t2i_R@10")


def table(results: list[dict]) -> str:
    lines = ["| method | published I->T R@1/5/10 | run I->T R@1/5/10 | run - published I->T R@1 "
             "| published T->I R@1/5/10 | run T->I R@1/5/10 | run - published T->I R@1 |",
             "|---|---|---|---:|---|---|---:|"]
    for r in results:
        method, avg = r.get("method", "dualprompt"), r["test"]["AVG"]
        run = [avg[k] for k in KEYS]
        pub = PUBLISHED.get(method)
        cells = [method]
        for half in (slice(0, 3), slice(3, 6)):
            cells += ["/".join(f"{v:.2f}" for v in pub[half]) if pub else "-",
                      "/".join(f"{v:.2f}" for v in run[half]),
                      f"{run[half][0] - pub[half][0]:+.2f}" if pub else "-"]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("results", nargs="+", type=Path, help="results.json files")
    args = parser.parse_args()
    runs = []
    for path in args.results:
        r = json.loads(path.read_text())
        if "test" not in r or "AVG" not in r["test"]:
            raise SystemExit(f"{path}: no test results (was the run finished, with test=true?)")
        runs.append(r)
    print(table(runs))


if __name__ == "__main__":
    main()

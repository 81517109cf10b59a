"""What a run writes: versions, git revision, results.json, the before/after table."""
from __future__ import annotations

import json
import os
import platform
import subprocess
import tempfile
from importlib import metadata
from pathlib import Path
from typing import IO, Any, Callable, Optional

PACKAGES = ("dualprompt", "torch", "torchvision", "open_clip_torch", "lightning",
            "torchmetrics", "hydra-core", "wandb")


def versions() -> dict[str, Optional[str]]:
    out: dict[str, Optional[str]] = {"python": platform.python_version()}
    for name in PACKAGES:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = None
    return out


def git_revision() -> Optional[str]:
    """The git commit of the dualprompt source tree, with '+dirty' for local changes."""
    here = Path(__file__).resolve().parent
    try:
        rev = subprocess.run(["git", "rev-parse", "HEAD"], cwd=here, capture_output=True,
                             text=True, timeout=10, check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"],
                               cwd=here, capture_output=True, text=True, timeout=10).stdout
    except (OSError, subprocess.SubprocessError):
        return None
    return rev + ("+dirty" if dirty.strip() else "")


def write_json(path: Path, data: Any) -> None:
    """Write JSON atomically (see `atomic_write`); nothing is written if `data` is not JSON."""
    text = json.dumps(data, indent=2, sort_keys=False)
    atomic_write(path, lambda f: f.write(text.encode()))


def atomic_write(path: Path, write: Callable[[IO[bytes]], Any]) -> None:
    """Write `path` through a temp file in its own folder renamed into place: a failure or a
    kill leaves the previous file (or none) under the name, never a partial one; on a failure
    the temp file is removed. (A temp file elsewhere, e.g. in $TMPDIR, would have to be copied
    into the final name when that is another filesystem.)"""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())  # the data is on disk before the name points at it
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes 0600; results are meant to be shared
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


KEYS = ("i2t_R@1", "i2t_R@5", "i2t_R@10", "t2i_R@1", "t2i_R@5", "t2i_R@10", "rsum")


def results_table(columns: dict[str, dict[str, dict[str, float]]]) -> str:
    """Markdown table, one row per (domain, method): columns = {method: {domain: metrics}}."""
    lines = ["| domain | method | " + " | ".join(KEYS) + " |",
             "|---|---|" + "---:|" * len(KEYS)]
    domains = list(dict.fromkeys(d for res in columns.values() for d in res))
    for domain in domains:
        for method, res in columns.items():
            if domain in res:
                cells = " | ".join(f"{res[domain].get(k, float('nan')):.2f}" for k in KEYS)
                lines.append(f"| {domain} | {method} | {cells} |")
    return "\n".join(lines)


def write_clip_benchmark(folder: Path, per_domain: dict[str, dict[str, float]], *, model: str,
                         pretrained: str, task: str = "zeroshot_retrieval") -> list[Path]:
    """One CLIP_benchmark result file per domain (`<folder>/<domain>.json`), as its `eval`
    writes them, so that `clip_benchmark build <folder>/*.json` tables them beside other
    models. Its retrieval keys: `image_retrieval_recall@k` is text->image (our t2i) and
    `text_retrieval_recall@k` image->text (our i2t), as fractions; mean and median ranks ride
    along under our names."""
    paths = []
    for domain, metrics in per_domain.items():
        if domain == "AVG":
            continue
        out: dict[str, float] = {}
        for key, value in metrics.items():
            if key in ("acc1", "acc5", "mean_per_class_recall"):  # classification, fractions
                out[key] = value / 100.0
                continue
            direction, _, rest = key.partition("_")
            if rest.startswith("R@"):
                side = "image" if direction == "t2i" else "text"
                out[f"{side}_retrieval_recall@{rest[2:]}"] = value / 100.0
            elif rest.endswith("rank"):
                out[key] = value
        path = folder / f"{domain}.json"
        write_json(path, {"dataset": domain, "model": model, "pretrained": pretrained,
                          "task": task, "metrics": out, "language": "en"})
        paths.append(path)
    return paths


def base_to_novel(per_domain: dict[str, dict[str, float]]) -> dict[str, dict[str, dict]]:
    """{domain: {metric: {"base", "novel", "hm"}}} for R@1 in each direction, from the
    `<domain>/base` and `<domain>/novel` galleries of a base-to-novel run (CoCoOp's harmonic
    mean: 2 b n / (b + n), 0 when both are 0)."""
    out: dict[str, dict[str, dict]] = {}
    for name in per_domain:
        if not name.endswith("/base") or name[:-5] + "/novel" not in per_domain:
            continue
        domain = name[:-5]
        base, novel = per_domain[name], per_domain[domain + "/novel"]
        out[domain] = {}
        for metric in ("i2t_R@1", "t2i_R@1"):
            b, n = base[metric], novel[metric]
            out[domain][metric] = {"base": b, "novel": n,
                                   "hm": 2 * b * n / (b + n) if b + n else 0.0}
    return out

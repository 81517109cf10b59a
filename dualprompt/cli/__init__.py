"""The command-line programs: `python -m dualprompt.train`, `.evaluate` and `.embed`.

Each is a Hydra app over the training stack (`dualprompt[train]`). This package's own
`__init__` imports nothing of that stack, so that a core-only install gets a one-line
message naming the extra to install instead of an ImportError traceback.
"""
from __future__ import annotations

import importlib
import sys

TRAINING_STACK = ("lightning", "hydra", "omegaconf", "torchmetrics")


def require_training_stack(command: str) -> None:
    """Exit with a clear message when the `train` extra is not installed."""
    missing = []
    for name in TRAINING_STACK:
        try:
            importlib.import_module(name)  # the command imports it next anyway
        except ImportError:
            missing.append(name)
    if missing:
        print(f"error: `python -m {command}` needs the training stack ({', '.join(missing)} "
              "not installed): pip install 'dualprompt[train]'", file=sys.stderr)
        raise SystemExit(1)

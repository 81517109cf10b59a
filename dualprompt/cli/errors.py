"""One clean line for the errors a user can fix (bad data, bad config, a missing file)."""
from __future__ import annotations

import contextlib
import logging
import os
import sys
from typing import Iterator

from ..data.datasets import ImageError

# What a user's input can cause. Anything else is a bug and keeps its traceback.
USER_ERRORS = (ValueError, FileNotFoundError, NotADirectoryError, IsADirectoryError,
               PermissionError, NotImplementedError, ImageError, ImportError)


@contextlib.contextmanager
def user_errors(log: logging.Logger) -> Iterator[None]:
    """Turn a known error into one logged line and exit status 1.

    `HYDRA_FULL_ERROR=1` re-raises it with the whole traceback, as Hydra does for its own."""
    try:
        yield
    except USER_ERRORS as e:
        if os.environ.get("HYDRA_FULL_ERROR") == "1":
            raise
        message = f"{type(e).__name__}: {_last_line(str(e))}"
        _to_log_files(log, message)
        print(f"Error: {message}\nSet the environment variable HYDRA_FULL_ERROR=1 for a "
              "complete stack trace.", file=sys.stderr)  # as Hydra reports its own errors
        raise SystemExit(1) from None


def _to_log_files(log: logging.Logger, message: str) -> None:
    """The error in the run's log file (Hydra's <job>.log) too, not twice on the console."""
    record = log.makeRecord(log.name, logging.ERROR, __file__, 0, message, None, None)
    for handler in logging.getLogger().handlers:
        if isinstance(handler, logging.FileHandler):
            handler.handle(record)


def _last_line(message: str) -> str:
    """A DataLoader worker's error arrives with the worker's traceback inside its message:
    keep the original error's own line."""
    if "Original Traceback" in message:
        lines = [line for line in message.strip().splitlines() if line.strip()]
        return lines[-1].split(": ", 1)[-1] if lines else message
    return message

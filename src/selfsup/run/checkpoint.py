"""Atomic checkpoints, loaded without running code.

Saving writes to a temporary file in the same folder, fsyncs, then renames: a crash while saving
leaves the previous checkpoint intact and a reader never sees half a file. Loading uses
``torch.load(weights_only=True)``: a checkpoint may only hold tensors and plain values (dicts,
lists, numbers, strings), so a file received from someone else cannot execute anything.
"""

from __future__ import annotations

import os
import pickle
import re
import tempfile
from pathlib import Path
from typing import Any, BinaryIO, Callable

import torch

TEMP_SUFFIX = ".tmp"


def atomic_write(path: str | Path, write: Callable[[BinaryIO], Any]) -> None:
    """Call ``write(file_object)`` on a temporary file beside ``path``, then rename it onto ``path``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=TEMP_SUFFIX, dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def is_temporary(path: Path) -> bool:
    """Whether ``path`` is a temporary file ``atomic_write`` left behind when its process was killed."""
    return path.name.startswith(".") and path.name.endswith(TEMP_SUFFIX)


def save_checkpoint(path: str | Path, state: dict[str, Any]) -> None:
    """Write ``state`` (tensors and plain values only, so that it loads with ``weights_only``) atomically."""
    atomic_write(path, lambda f: torch.save(state, f))


def load_checkpoint(path: str | Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """A checkpoint's state; a file holding anything but tensors and plain values is refused, unexecuted."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no checkpoint at {path}: start without --resume, or point --out at an existing run")
    try:
        return torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as error:
        found = re.search(r"GLOBAL (\S+)", str(error))
        if found is None:
            raise ValueError(
                f"checkpoint {path} is unreadable (not a checkpoint, or damaged); delete it to start again"
            ) from None
        raise ValueError(
            f"checkpoint {path} was refused: it references {found.group(1)}, which a selfsup checkpoint never does, "
            "and loading it could run code; use only checkpoints you trust, or delete it to start again"
        ) from None
    except Exception as error:
        raise ValueError(
            f"checkpoint {path} is unreadable ({error.__class__.__name__}); delete it to start again"
        ) from None


def rng_state(device: torch.device) -> dict[str, torch.Tensor]:
    """The random streams a mid-epoch checkpoint must hold to continue the epoch's draws exactly."""
    state = {"cpu": torch.get_rng_state()}
    if device.type == "cuda":
        state["cuda"] = torch.cuda.get_rng_state(device)
    return state


def restore_rng(state: dict[str, torch.Tensor], device: torch.device) -> None:
    torch.set_rng_state(state["cpu"])
    if device.type == "cuda" and "cuda" in state:
        torch.cuda.set_rng_state(state["cuda"], device)

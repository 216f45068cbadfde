"""Atomic checkpoints, loaded without running code.

Saving writes a new file, then renames it (``files.atomic_write``): a crash or a full disk while saving
leaves the previous checkpoint intact and a reader never sees half a file. Loading uses
``torch.load(weights_only=True)``: a checkpoint may only hold tensors and plain values (dicts,
lists, numbers, strings), so a file received from someone else cannot execute anything.
"""

from __future__ import annotations

import pickle
import re
from pathlib import Path
from typing import Any

import torch

from selfsup.run.files import DiskFull, atomic_write


def save_checkpoint(path: str | Path, state: dict[str, Any]) -> None:
    """Write ``state`` (tensors and plain values only, so that it loads with ``weights_only``) atomically; on a full
    disk, one line (``DiskFull``) saying what is kept and how to go on."""
    path = Path(path)
    previous = path.is_file()
    try:
        atomic_write(path, lambda f: torch.save(state, f))
    except DiskFull:
        run = path.parent.parent  # checkpoints/last.pt of the run folder
        then = (f"the previous checkpoint is kept unchanged; free some space, then continue with: selfsup train "
                f"--resume --out {run}") if previous else "there is no earlier one; free some space and start again"
        raise DiskFull(f"the disk is full: the checkpoint {path} could not be saved, and {then}") from None


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

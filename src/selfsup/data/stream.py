"""Large image folders, streamed: listed once, then decoded batch by batch in DataLoader workers.

A folder whose decoded uint8 copy would be too large to keep (ImageNet's train split at 224 px is
about 190 GB) is not cached. ``ImageFiles`` stands in for the data tensor of an ``ArrayDataset``:
each batch of indices is read and decoded (Pillow, RGB, shorter side resized, centre crop to a
square) by ``workers`` processes while the device trains on the batch before, and the views then
run on the device exactly as for cached data. The listing, labels and channel statistics (from an
even sample of ``STATS_SAMPLE`` images) are cached, so a second run starts without a full scan.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import DataLoader, Dataset
from tqdm import tqdm

from selfsup.data.images import (
    channel_stats,
    common_side,
    decode_image,
    labels_of,
    list_images,
    printable,
    read_image_file,
    select_split,
)

STATS_SAMPLE = 1024


def default_workers() -> int:
    """Decoding processes per training process: the CPUs this process may use, at most 8."""
    return max(1, min(8, len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1))


class ImageFiles(Dataset):
    """The images ``root/name`` for each name, decoded on demand to uint8 [3, size, size].

    on_error: 'stop' raises on an unreadable file, naming it; 'skip' reports it on stderr and
    returns the next readable image in the list instead, so every batch keeps its size.
    """

    dtype = torch.uint8

    def __init__(self, root: Path, names: Sequence[str], size: int, on_error: str = "stop", workers: int | None = None):
        if on_error not in ("stop", "skip"):
            raise ValueError(f"on_error must be 'stop' or 'skip', not '{on_error}'")
        self.root, self.names, self.size, self.on_error = Path(root), list(names), size, on_error
        self.workers = default_workers() if workers is None else workers

    def __len__(self) -> int:
        return len(self.names)

    @property
    def shape(self) -> torch.Size:
        return torch.Size((len(self.names), 3, self.size, self.size))

    @property
    def device(self) -> torch.device:
        return torch.device("cpu")

    def to(self, device: torch.device | str) -> ImageFiles:
        """Files stay where they are; batches go to the device as they are decoded."""
        return self

    def __getitem__(self, index: int) -> tuple[Tensor, str]:
        """(image, '') or, when it cannot be read and on_error is 'stop', (zeros, the error to raise).

        Errors travel back as data so that the training process raises them as one line,
        not as a worker's traceback.
        """
        for offset in range(len(self.names)):
            name = self.names[(index + offset) % len(self.names)]
            try:
                pixels = decode_image(read_image_file(self.root / name), self.size)
                return torch.from_numpy(pixels.transpose(2, 0, 1).copy()), ""
            except (OSError, ValueError, SyntaxError) as err:
                if self.on_error == "stop":
                    message = (f"cannot read image {printable(name)} in {printable(self.root)} ({err}); "
                               "remove it or set data.on_error=skip")
                    return torch.zeros(self.shape[1:], dtype=self.dtype), message
                print(f"skipped unreadable image {printable(self.root / name)} ({err}); using the next one",
                      file=sys.stderr)
        return torch.zeros(self.shape[1:], dtype=self.dtype), f"no readable image in {printable(self.root)}"

    def stream(self, batches: Sequence[Tensor], device: torch.device) -> Iterator[Tensor]:
        """The images of each index batch, in order, decoded by ``workers`` processes and moved to ``device``."""
        loader = DataLoader(
            self, batch_sampler=[b.tolist() for b in batches], num_workers=self.workers,
            pin_memory=device.type == "cuda", prefetch_factor=4 if self.workers else None,
            generator=torch.Generator(),  # its workers' seeds must not advance the global RNG the views draw from
        )
        for images, errors in loader:
            failed = [e for e in errors if e]
            if failed:
                raise ValueError(failed[0])
            yield images.to(device, non_blocking=True)


def list_streamed_folder(
    source: Path, split: str, size: int | None, progress: bool
) -> tuple[dict[str, np.ndarray], dict]:
    """One split of an ImageFolder directory: ({'labels'}, {names, classes, image size, channel mean and std, and
    how the split was chosen: ``images.Selection``'s rule and unlabelled})."""
    entries = list_images(source)
    if not entries:
        raise ValueError(f"no images found in {printable(source)}: expected [split/]class/image files (.jpg, .png, ...)")
    selection = select_split(entries, split, source)
    names = [name for name, _ in selection.entries]
    labels = labels_of(names, selection.classes)
    sample = names[:: max(1, len(names) // STATS_SAMPLE)][:STATS_SAMPLE]
    size = common_side([lambda path=source / name: read_image_file(path) for name in names], source, size)
    if size is None:
        raise ValueError(f"no readable images among those sampled in {printable(source)}")
    decoded = []
    for name in tqdm(sample, desc=f"sampling {source.name} for channel statistics", disable=not progress, unit="img"):
        try:
            decoded.append(decode_image(read_image_file(source / name), size))
        except (OSError, ValueError, SyntaxError):
            continue  # unreadable files are reported (or skipped) when training reaches them
    if not decoded:
        raise ValueError(f"no readable images among {len(sample)} sampled in {printable(source)}")
    mean, std = channel_stats(np.stack(decoded).transpose(0, 3, 1, 2))
    meta = {"names": names, "classes": selection.classes, "size": int(size), "mean": mean, "std": std,
            "rule": selection.rule, "unlabelled": selection.unlabelled}
    return {"labels": labels}, meta

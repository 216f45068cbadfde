"""Streaming a folder: images/s decoded by DataLoader workers, against the decode-once cache, in one run.

    .venv/bin/python benchmarks/stream.py [--source ../shared/data/cifar10/train.tar.gz] [--images 10240]
        [--batch 256] [--workers 0 1 2]

A .tar.gz source is extracted to a temporary folder first (streaming needs random access to files).
Each row reads the same shuffled index batches (``--images`` in all) the way the trainer does, through
``selfsup.data.iterate_batches``: from the streamed folder with N workers, and from the memory-mapped
cache of the same folder. The last column compares each rate with a training step rate given by
``--train-images-per-s`` (what ``selfsup bench`` reports for the run you plan), to show whether the
input pipeline keeps up.
"""

from __future__ import annotations

import argparse
import os
import tarfile
import tempfile
import time
from pathlib import Path

import torch

from selfsup.data import iterate_batches, load_dataset

CIFAR_TRAIN = Path(__file__).resolve().parents[2] / "shared" / "data" / "cifar10" / "train.tar.gz"


def images_per_s(data, batches: list[torch.Tensor]) -> float:
    start = time.perf_counter()
    count = sum(len(images) for images in iterate_batches(data, batches, torch.device("cpu")))
    return count / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--source", type=Path, default=CIFAR_TRAIN)
    parser.add_argument("--images", type=int, default=10240)
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument("--workers", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--train-images-per-s", type=float, default=None)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as scratch:
        os.environ.setdefault("SELFSUP_CACHE", str(Path(scratch) / "decoded"))
        folder = args.source
        if args.source.is_file():
            folder = Path(scratch) / "images"
            with tarfile.open(args.source) as archive:
                archive.extractall(folder, filter="data")
        spec = f"folder:{folder}"
        cached = load_dataset(spec, split="train", stream=False)
        order = torch.randperm(len(cached), generator=torch.Generator().manual_seed(0))[: args.images]
        batches = list(order.split(args.batch))
        rows = [("decode-once cache (memory-mapped)", images_per_s(cached.data, batches))]
        for workers in args.workers:
            streamed = load_dataset(spec, split="train", stream=True, workers=workers, progress=False)
            rows.append((f"streamed, {workers} worker(s)", images_per_s(streamed.data, batches)))
        print(f"{len(order)} images of {cached.data.shape[-1]} px in batches of {args.batch}, "
              f"{os.cpu_count()} CPUs, torch {torch.__version__}")
        print("| source | images/s | vs 0 workers |" + (" vs training |" if args.train_images_per_s else ""))
        print("|---|---|---|" + ("---|" if args.train_images_per_s else ""))
        base = rows[1][1] if len(rows) > 1 else rows[0][1]
        for name, rate in rows:
            cells = f"| {name} | {rate:,.0f} | {rate / base:.2f}x |"
            if args.train_images_per_s:
                cells += f" {rate / args.train_images_per_s:.1f}x |"
            print(cells)


if __name__ == "__main__":
    main()

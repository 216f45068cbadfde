"""A 28 px grayscale ImageFolder stand-in, trained through ``folder:`` by the six targeted methods.

scikit-learn's digits upsampled to 28 px; each training digit in 8 randomly rotated (within 15 degrees) and shifted
(within 2 px) copies, each test digit in 4 (10,056 / 2,160 PNGs), written as ``train/CLASS/*.png`` and
``test/CLASS/*.png`` into one tar.gz. Each method runs ``selfsup train --data folder:ARCHIVE --epochs 2
--set backbone.width=16 --set eval.knn_k=200`` and prints kNN@200, the linear probe and the command's wall time,
beside raw pixels' kNN@200 on the same splits (the training split's statistics normalise both).

    python benchmarks/folder_standin.py --out /tmp/standin [--methods simclr moco]
"""

from __future__ import annotations

import argparse
import io
import json
import os
import subprocess
import sys
import tarfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

METHODS = ["simclr", "byol", "moco", "barlow_twins", "vicreg", "swav"]
COPIES = {"train": 8, "test": 4}


def build_archive(path: Path, seed: int = 0) -> None:
    """The stand-in as one tar.gz of PNGs (train/ and test/ as in scikit-learn's first 1,257 / last 540 digits)."""
    from sklearn.datasets import load_digits

    digits = load_digits()
    rng = np.random.default_rng(seed)
    splits = {"train": range(0, 1257), "test": range(1257, len(digits.images))}
    with tarfile.open(path, "w:gz") as archive:
        for split, indices in splits.items():
            for i in indices:
                base = Image.fromarray((digits.images[i] * 255 / 16).astype(np.uint8)).resize((28, 28), Image.BICUBIC)
                for copy in range(COPIES[split]):
                    moved = base.rotate(rng.uniform(-15, 15), resample=Image.BILINEAR,
                                        translate=tuple(int(t) for t in rng.integers(-2, 3, size=2)))
                    png = io.BytesIO()
                    moved.save(png, format="PNG")
                    info = tarfile.TarInfo(f"{split}/{digits.target[i]}/{i:04d}_{copy}.png")
                    info.size = png.tell()
                    png.seek(0)
                    archive.addfile(info, png)


def pixels_knn(archive: Path) -> float:
    from selfsup.evaluate.scoring import pixel_knn
    from selfsup.train.setup import load_datasets

    return pixel_knn(load_datasets(f"folder:{archive}", None), 200, 0.1)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True, help="folder for the archive and the runs")
    parser.add_argument("--methods", nargs="+", default=METHODS, help="methods to train (default: all six)")
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    archive = args.out / "digits28x8.tar.gz"
    if not archive.is_file():
        build_archive(archive)
    print(f"raw pixels kNN@200: {pixels_knn(archive):.3f}", flush=True)
    selfsup = Path(sys.executable).with_name("selfsup")
    for method in args.methods:
        run = args.out / method
        start = time.perf_counter()
        subprocess.run([str(selfsup), "train", "--method", method, "--data", f"folder:{archive}", "--epochs", "2",
                        "--set", "backbone.width=16", "--set", "eval.knn_k=200", "--out", str(run), "--overwrite",
                        "--json"], check=True, stdout=subprocess.DEVNULL, env={**os.environ, "OMP_NUM_THREADS": "1"})
        summary = json.loads((run / "summary.json").read_text())
        print(f"{method}: kNN@200 {summary['knn_top1']:.3f}  linear {summary['linear_top1']:.3f}  "
              f"wall {time.perf_counter() - start:.0f} s", flush=True)


if __name__ == "__main__":
    main()

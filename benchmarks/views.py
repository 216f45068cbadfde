"""Our batched views vs kornia's equivalent pipeline on the same uint8 batch and device.

    .venv/bin/python benchmarks/views.py [--preset simclr_cifar] [--batch 512] [--size 32] [--device cpu] [--repeats 20]

Both sides start from the same uint8 [B, 3, S, S] batch (real CIFAR-10 images when the shared
tarball is there) and return two normalised float views. Runs alternate between the two so that
load from other processes hits both alike; the median of each is reported, with the ratio, both in
wall-clock time and (on CPU) in process CPU time, which other processes on a shared machine cannot inflate.
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

import torch

from selfsup.data.views import build_views, resolve

CIFAR_TRAIN = Path(__file__).resolve().parents[2] / "shared" / "data" / "cifar10" / "train.tar.gz"
MEAN, STD = (0.491, 0.482, 0.447), (0.247, 0.243, 0.262)


def kornia_pipeline(preset: str, size: int):
    """kornia.augmentation with the preset's parameters, one pipeline per view (BYOL's differ)."""
    import kornia.augmentation as K

    s = resolve({"preset": preset})

    def of_view(key: str, view: int, default: float = 0.0) -> float:
        value = s.get(key, default)
        return value[view] if isinstance(value, list) else value

    def pipeline(view: int) -> torch.nn.Sequential:
        steps = [
            K.RandomResizedCrop((size, size), scale=s.get("scale", (0.08, 1.0))),
            K.RandomHorizontalFlip(p=s.get("flip_p", 0.5)),
            K.ColorJitter(s["brightness"], s["contrast"], s["saturation"], s["hue"], p=s.get("jitter_p", 0.8)),
            K.RandomGrayscale(p=s["gray_p"]),
        ]
        if of_view("blur_p", view) > 0:
            kernel = max(3, round(size * 0.1)) | 1
            steps.append(K.RandomGaussianBlur((kernel, kernel), (0.1, 2.0), p=of_view("blur_p", view)))
        if of_view("solarize_p", view) > 0:
            steps.append(K.RandomSolarize(thresholds=0.0, additions=0.0, p=of_view("solarize_p", view)))
        steps.append(K.Normalize(torch.tensor(MEAN), torch.tensor(STD)))
        return torch.nn.Sequential(*steps)

    first, second = pipeline(0), pipeline(1)

    def make(batch: torch.Tensor) -> list[torch.Tensor]:
        x = batch.float() / 255.0
        return [first(x), second(x)]

    return make


def load_batch(batch: int, size: int) -> tuple[torch.Tensor, str]:
    """Real CIFAR-10 (JPEG) images at 32 px when the shared tarball is there, random pixels otherwise."""
    if CIFAR_TRAIN.exists() and size == 32:
        from selfsup.data.folder import load_image_folder

        data = load_image_folder(CIFAR_TRAIN, image_size=32, limit=batch, progress=False).data
        if len(data) >= batch:
            return data[:batch], "CIFAR-10 (JPEG) train images"
    return torch.randint(0, 256, (batch, 3, size, size), dtype=torch.uint8), "random pixels"


def time_once(fn, batch: torch.Tensor) -> tuple[float, float]:
    """(wall seconds, process CPU seconds) of one call."""
    if batch.is_cuda:
        torch.cuda.synchronize()
    wall, cpu = time.perf_counter(), time.process_time()
    fn(batch)
    if batch.is_cuda:
        torch.cuda.synchronize()
    return time.perf_counter() - wall, time.process_time() - cpu


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default="simclr_cifar")
    parser.add_argument("--batch", type=int, default=512)
    parser.add_argument("--size", type=int, default=32)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    batch, source = load_batch(args.batch, args.size)
    batch = batch.to(args.device)
    ours = build_views({"preset": args.preset}, 3, args.size, MEAN, STD)
    theirs = kornia_pipeline(args.preset, args.size)
    for fn in (ours, theirs):  # warm-up
        fn(batch)
    times: dict[str, list[tuple[float, float]]] = {"selfsup": [], "kornia": []}
    for _ in range(args.repeats):
        times["selfsup"].append(time_once(ours, batch))
        times["kornia"].append(time_once(theirs, batch))
    wall = {name: statistics.median(t[0] for t in runs) for name, runs in times.items()}
    cpu = {name: statistics.median(t[1] for t in runs) for name, runs in times.items()}
    print(
        f"preset={args.preset} batch={args.batch}x3x{args.size}x{args.size} device={args.device} "
        f"threads={torch.get_num_threads()} views=2 repeats={args.repeats} (medians) data={source}"
    )
    for name in times:
        print(f"  {name:8s} {args.batch / wall[name]:8.0f} images/s wall ({1000 * wall[name]:7.1f} ms/batch), "
              f"{1000 * cpu[name]:7.1f} CPU-ms/batch")
    print(f"  ratio selfsup/kornia: {wall['kornia'] / wall['selfsup']:.2f}x wall-clock, "
          f"{cpu['kornia'] / cpu['selfsup']:.2f}x CPU time")


if __name__ == "__main__":
    main()

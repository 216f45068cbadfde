"""CIFAR-10 (JPEG) benchmark: pre-train a method with its CIFAR preset, evaluate, append a row to RESULTS.md.

    python benchmarks/cifar10.py --method simclr [--epochs N] [--batch-size B] [--width W]
        [--device cpu|cuda] [--data-dir DIR] [--train-subset N] [--set key=value ...]
    python benchmarks/cifar10.py --method all ...   # every image method, one after another (or a comma list)

Data: the ImageFolder tarballs ``train.tar.gz`` / ``test.tar.gz`` in ``--data-dir`` (default
``../shared/data/cifar10`` beside the repository), loaded as ``folder:DIR``. ``--train-subset N``
pre-trains on a fixed, class-balanced subset of N training images (to keep CPU runs short).
kNN and linear probe always use the full 10k test set; their labelled memory/training split is
the full 50k train split unless ``--eval-train subset``.

Printed ratios, measured in the same run: kNN of the trained vs the random-init encoder, and
kNN / linear top-1 against the published anchors (lightly's 200-epoch kNN, solo-learn's
1000-epoch linear; ResNet-18, original CIFAR-10).
"""

from __future__ import annotations

import argparse
import datetime
import shlex
import sys
import time
import traceback
from pathlib import Path
from typing import Any

import torch

from selfsup import methods
from selfsup.commands.evaluation import random_init_knn
from selfsup.data import load_dataset
from selfsup.data.base import ArrayDataset
from selfsup.train.setup import Datasets, make_config, resolve_device
from selfsup.train.trainer import fit

REPO = Path(__file__).resolve().parents[1]
SECTION = "## CIFAR-10 (JPEG)"

# lightly's CIFAR-10 benchmark: kNN top-1, ResNet-18, 200 epochs, batch 512.
LIGHTLY_KNN_200 = {"simclr": 0.848, "byol": 0.868, "moco": 0.847, "barlow_twins": 0.819, "simsiam": 0.764, "swav": 0.842}
# solo-learn's CIFAR-10 table: linear top-1, ResNet-18, 1000 epochs ("moco" is their MoCo v2+).
SOLO_LINEAR_1000 = {
    "simclr": 0.9074, "byol": 0.9258, "barlow_twins": 0.9210, "vicreg": 0.9207, "moco": 0.9294,
    "simsiam": 0.9051, "swav": 0.8917, "wmse": 0.8867, "deepclusterv2": 0.8885,
}

COLUMNS = [
    "date (UTC)", "method", "backbone", "epochs", "batch", "pretrain images", "kNN/linear train split",
    "kNN top-1", "random-init kNN", "linear top-1", "train s (total s)", "images/s", "device", "command", "notes",
]

SECTION_HEADER = f"""{SECTION}

Pre-training on the JPEG copy of CIFAR-10 (`../shared/data/cifar10`, train 50,000 / test 10,000) with each
method's `cifar` preset, by `benchmarks/cifar10.py`. kNN: weighted kNN (k=200, T=0.1, cosine) of the frozen
encoder's features; linear: L-BFGS logistic regression on frozen, un-augmented features. Both score the full
10k test set; the labelled split they use is in the "kNN/linear train split" column. "random-init kNN" is the
same architecture at its initialisation, measured in the same run. The warm-up is the preset's fraction of
the preset's schedule (preset warm-up epochs x run epochs / preset epochs), so a short run keeps the paper's
schedule shape. Rows with a small width, few epochs or a pretraining subset are smoke tests of the whole
pipeline: they are not comparable with the anchors below.

Anchors (ResNet-18, original CIFAR-10): lightly's kNN top-1 after 200 epochs at batch 512 and solo-learn's
linear top-1 after 1000 epochs.

| method | lightly kNN, 200 epochs | solo-learn linear, 1000 epochs |
|---|---|---|
""" + "".join(
    f"| {name} | {LIGHTLY_KNN_200.get(name, '—')} | {SOLO_LINEAR_1000[name]:.4f} |\n"
    for name in ["simclr", "byol", "moco", "barlow_twins", "vicreg", "simsiam", "swav", "wmse", "deepclusterv2"]
).replace("| moco |", "| moco (solo-learn: MoCo v2+) |")


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--method", required=True, help="a method name (see `selfsup methods`), a comma list, or 'all'")
    parser.add_argument("--epochs", type=int, help="default: the preset's")
    parser.add_argument("--batch-size", type=int, help="default: the preset's")
    parser.add_argument("--width", type=int, default=64, help="ResNet base channels (64 = full ResNet-18)")
    parser.add_argument("--device", default="auto", help="cpu, cuda or auto")
    parser.add_argument("--data-dir", default=str(REPO.parent / "shared" / "data" / "cifar10"),
                        help="folder holding train.tar.gz and test.tar.gz")
    parser.add_argument("--cache-dir", help="where decoded images are cached (default: selfsup's data cache)")
    parser.add_argument("--train-subset", type=int, help="pre-train on a class-balanced subset of N images")
    parser.add_argument("--eval-train", choices=["full", "subset"], default="full",
                        help="labelled split for kNN / linear probe: the full train split or the pretraining subset")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="config override")
    parser.add_argument("--out", default=str(REPO / "runs" / "bench-cifar10"), help="parent folder of the run folders")
    parser.add_argument("--results", default=str(REPO / "benchmarks" / "RESULTS.md"), help="markdown file to append to")
    return parser.parse_args(argv)


def image_methods() -> list[str]:
    return [name for name, cls in methods.available().items() if cls.data_kind != "sequence"]


def balanced_subset(data: ArrayDataset, size: int, seed: int = 0) -> ArrayDataset:
    """``size`` images, the same number from each class, chosen by a fixed seed (the same on every run)."""
    classes = data.num_classes
    if size % classes or not 0 < size <= len(data):
        raise ValueError(f"--train-subset {size}: use a multiple of the {classes} classes, at most {len(data)}")
    generator = torch.Generator().manual_seed(seed)
    chosen = []
    for label in range(classes):
        members = (data.labels == label).nonzero().flatten()
        chosen.append(members[torch.randperm(len(members), generator=generator)[: size // classes]])
    index = torch.cat(chosen).sort().values
    return ArrayDataset(data.data[index], data.labels[index], data.classes, data.name, data.kind, data.mean, data.std)


def settings(args: argparse.Namespace, method: str) -> list[str]:
    """``--set`` assignments for this run: size, device, then the user's (the recipe fits the rest to the run)."""
    epochs = args.epochs or methods.preset(method)["cifar"].get("train", {}).get("epochs", 100)
    out = [f"backbone.width={args.width}", f"train.epochs={epochs}", f"train.device={args.device}",
           "train.progress=false", "eval.every=0"]
    if args.batch_size:
        out.append(f"train.batch_size={args.batch_size}")
    return out + list(args.set)


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"CPU ({torch.get_num_threads()} threads)"


def command_for(method: str, argv: list[str]) -> str:
    """The command that reruns this one method (a ``--method`` list replaced; output paths left out)."""
    words, skip = ["python", "benchmarks/cifar10.py"], False
    for i, word in enumerate(argv):
        if skip:
            skip = False
            continue
        if word in ("--out", "--results"):
            skip = True
            continue
        if word.startswith(("--out=", "--results=")):
            continue
        if i > 0 and argv[i - 1] == "--method":
            word = method
        words.append(f"--method={method}" if word.startswith("--method=") else word)
    return " ".join(shlex.quote(w) for w in words)


def compare(name: str, value: float, anchors: dict[str, float], what: str) -> str:
    if name not in anchors:
        return ""
    return f"; {value / anchors[name]:.2f} x {what} {anchors[name]:.3f}"


def random_init_top1(cfg: dict[str, Any], datasets: Datasets, device: torch.device, seen: dict[str, float]) -> float:
    """kNN of the run's starting encoder; methods sharing backbone, seed and kNN settings share the number."""
    key = repr((cfg["backbone"], cfg["train"]["seed"], cfg["eval"]["knn_k"], cfg["eval"]["knn_t"], str(device)))
    if key not in seen:
        seen[key] = random_init_knn(cfg, datasets, device)
    return seen[key]


def run_one(
    method: str, args: argparse.Namespace, datasets: Datasets, spec: str, argv: list[str], seen: dict[str, float]
) -> dict[str, Any]:
    """Train and evaluate one method; the row for RESULTS.md (a failure is a row too)."""
    pretrain = datasets.pretrain
    row: dict[str, Any] = {
        "date (UTC)": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M"),
        "method": method, "pretrain images": f"{len(pretrain):,}",
        "kNN/linear train split": f"{'subset' if datasets.train is pretrain and args.train_subset else 'full'} {len(datasets.train):,}",
        "command": f"`{command_for(method, argv)}`",
    }
    start = time.perf_counter()
    try:
        assignments = settings(args, method)
        cfg = make_config(method, spec, pretrain, args.cache_dir, assignments=assignments)
        backbone = cfg["backbone"]
        row.update({
            "backbone": f"{backbone['name']} w{backbone['width']}", "epochs": cfg["train"]["epochs"],
            "batch": cfg["train"]["batch_size"],
        })
        device = resolve_device(cfg["train"]["device"])
        row["device"] = device_name(device)
        random_knn = random_init_top1(cfg, datasets, device, seen)
        row["random-init kNN"] = f"{random_knn:.4f}"
        summary = fit(method, spec, out_dir=Path(args.out) / method, data_dir=args.cache_dir, assignments=assignments,
                      datasets=datasets)
    except Exception as err:  # one broken method must not stop `--method all`; the row records it
        traceback.print_exc()
        message = " ".join(f"{type(err).__name__}: {err}".split())
        row["notes"] = ("diverged: " if isinstance(err, FloatingPointError) else "FAILED: ") + message.replace("|", "/")
        return row
    total = time.perf_counter() - start
    knn, linear = summary["knn_top1"], summary["linear_top1"]
    row.update({
        "kNN top-1": f"{knn:.4f}", "linear top-1": f"{linear:.4f}", "train s (total s)": f"{summary['wall_s']:.0f} ({total:.0f})",
        "images/s": f"{summary['images_per_s']:.0f}", "notes": f"kNN {knn / random_knn:.2f} x random init",
    })
    print(
        f"{method}: kNN {knn:.4f} = {knn / random_knn:.2f} x random-init {random_knn:.4f} (+{knn - random_knn:.4f})"
        f"{compare(method, knn, LIGHTLY_KNN_200, 'lightly 200-epoch kNN')}; linear {linear:.4f}"
        f"{compare(method, linear, SOLO_LINEAR_1000, 'solo-learn 1000-epoch linear')}; "
        f"{summary['images_per_s']:.0f} images/s, train {summary['wall_s']:.0f} s of {total:.0f} s",
        flush=True,
    )
    return row


def append_row(results: Path, row: dict[str, Any]) -> None:
    """Add ``row`` at the end of this section's table, creating the section (or file) when missing."""
    line = "| " + " | ".join(str(row.get(column, "—")) for column in COLUMNS) + " |\n"
    lines = results.read_text().splitlines(keepends=True) if results.is_file() else []
    if not any(existing.rstrip() == SECTION for existing in lines):
        if lines and lines[-1].strip():
            lines.append("\n")
        lines.append(SECTION_HEADER + "\n")
        lines.append("| " + " | ".join(COLUMNS) + " |\n")
        lines.append("|" + "---|" * len(COLUMNS) + "\n")
        lines.append(line)
    else:
        begin = next(i for i, existing in enumerate(lines) if existing.rstrip() == SECTION)
        end = next((i for i in range(begin + 1, len(lines)) if lines[i].startswith("## ")), len(lines))
        last_table_line = max(i for i in range(begin, end) if lines[i].startswith("|"))
        lines.insert(last_table_line + 1, line)
    results.parent.mkdir(parents=True, exist_ok=True)
    results.write_text("".join(lines))


def main(argv: list[str]) -> None:
    args = parse_args(argv)
    names = image_methods() if args.method == "all" else args.method.split(",")
    for name in names:
        if methods.get(name).data_kind == "sequence":
            raise SystemExit(f"{name} trains on sequences, not images: pick an image method (see `selfsup methods`)")
    spec = f"folder:{args.data_dir}"
    train = load_dataset(spec, args.cache_dir, "train")  # an ImageFolder's pretrain split is its train split
    datasets = Datasets(train, train, load_dataset(spec, args.cache_dir, "test"))
    if args.train_subset:
        subset = balanced_subset(datasets.pretrain, args.train_subset)
        datasets = Datasets(subset, subset if args.eval_train == "subset" else datasets.train, datasets.test)
    rows, seen = [], {}
    for name in names:
        print(f"=== {name}: {len(datasets.pretrain):,} pretraining images", flush=True)
        row = run_one(name, args, datasets, spec, argv, seen)
        append_row(Path(args.results), row)
        rows.append(row)
    print("\n" + "\n".join(
        f"{r['method']:<14} kNN {r.get('kNN top-1', '—'):<7} random-init {r.get('random-init kNN', '—'):<7} "
        f"linear {r.get('linear top-1', '—'):<7} {r.get('notes', '')}" for r in rows
    ))


if __name__ == "__main__":
    main(sys.argv[1:])

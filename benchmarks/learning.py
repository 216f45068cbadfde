"""Learning benchmark: each image method trained by the library next to a compact reference implementation.

    python benchmarks/learning.py [--data digits|cifar10] [--methods simclr,byol|all] [--epochs 20]
        [--width 16] [--knn-k 200] [--knn-t 0.1] [--threads 1] [--cifar DIR] [--cifar-train 5000]
        [--cifar-test 1000] [--out DIR]

For every method, on one dataset: kNN top-1 of the encoder after ``--epochs`` of the library's
training (``selfsup.train.trainer.fit`` with only epochs, width and evaluation settings: the recipe
layer chooses the backbone, batch, schedule and state sizes and writes them to the run's
config.yaml), of the compact reference in ``benchmarks/reference/`` trained for as many epochs with
the same backbone (same config, same seed), of raw pixels and of the random-init backbone. Every
column is scored by one function: eval-mode features of the normalised images, the library's
weighted kNN (cosine, temperature ``--knn-t``) at ``--knn-k`` and at the k the run's config chose.
Wall times are training only, measured in the same process, so their ratio is the comparable number.

Data: ``digits`` is scikit-learn's (1,257 train / 540 test, pretraining on the train split);
``cifar10`` is a subset of the ImageFolder tarballs in ``--cifar`` (``train.tar.gz``,
``test.tar.gz``): ``--cifar-train`` images evenly spread over the train split (pretraining and kNN
memory) and ``--cifar-test`` over the test split.
"""

from __future__ import annotations

import argparse
import datetime
import json
import math
import sys
import traceback
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import yaml
from torch import nn

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from benchmarks.reference import REFERENCES, train_reference  # noqa: E402
from benchmarks.reference.common import encode, knn_scores  # noqa: E402
from selfsup import methods  # noqa: E402
from selfsup.nn.backbones import build_backbone  # noqa: E402
from selfsup.train.setup import Datasets, load_datasets, make_config  # noqa: E402
from selfsup.train.trainer import fit  # noqa: E402

Scores = dict[int, list[float]]  # k -> one kNN top-1 per seed


@dataclass
class Row:
    method: str
    epochs: int
    run_k: int | None = None
    backbone: str = ""
    library: Scores = field(default_factory=dict)
    reference: Scores = field(default_factory=dict)
    random_init: Scores = field(default_factory=dict)
    library_s: list[float] = field(default_factory=list)
    reference_s: list[float] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)


def add(into: Scores, measured: dict[int, float]) -> None:
    for k, top1 in measured.items():
        into.setdefault(k, []).append(top1)


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", choices=["digits", "cifar10"], default="digits")
    parser.add_argument("--methods", default="all", help="comma list of image methods, or 'all'")
    parser.add_argument("--epochs", type=int, default=20)
    parser.add_argument("--width", type=int, default=16, help="backbone.width of the library run and the reference")
    parser.add_argument("--knn-k", type=int, default=200)
    parser.add_argument("--knn-t", type=float, default=0.1)
    parser.add_argument("--threads", type=int, default=1, help="torch intra-op threads")
    parser.add_argument("--seeds", type=int, default=1, help="repeat every run with seeds 0..N-1 (means and range)")
    parser.add_argument("--cifar", help="folder with CIFAR-10 (JPEG) train.tar.gz / test.tar.gz")
    parser.add_argument("--cifar-train", type=int, default=5000)
    parser.add_argument("--cifar-test", type=int, default=1000)
    parser.add_argument("--out", default=str(REPO / "runs" / "bench-learning"), help="parent of the library's runs")
    return parser.parse_args(argv)


def image_methods() -> list[str]:
    return [name for name, cls in methods.available().items() if cls.data_kind in ("image", "any")]


def load_data(args: argparse.Namespace) -> tuple[str, Datasets] | None:
    """(data SPEC for the library, the three splits), or None when CIFAR-10 is not there."""
    if args.data == "digits":
        return "digits", load_datasets("digits", None)
    folder = Path(args.cifar or "")
    if not args.cifar or not (folder / "train.tar.gz").is_file() or not (folder / "test.tar.gz").is_file():
        print(f"CIFAR-10 skipped: no train.tar.gz / test.tar.gz in --cifar {args.cifar!r}", file=sys.stderr)
        return None
    from selfsup.data.folder import load_image_folder

    train = load_image_folder(folder, "train", limit=args.cifar_train, progress=False, name="cifar10")
    test = load_image_folder(folder, "test", limit=args.cifar_test, progress=False, name="cifar10")
    test.mean, test.std = train.mean, train.std
    return f"folder:{folder}", Datasets(pretrain=train, train=train, test=test)


def scores(encoder: nn.Module, data: Datasets, ks: list[int], t: float) -> dict[int, float]:
    """kNN top-1 of ``encoder`` at each k: train split as memory, test split scored."""
    mean, std = data.train.mean, data.train.std
    train_x, test_x = encode(encoder, data.train.data, mean, std), encode(encoder, data.test.data, mean, std)
    return knn_scores(train_x, data.train.labels, test_x, data.test.labels, ks, t)


def fresh_encoder(cfg: dict[str, Any], data: Datasets, seed: int | None = None) -> nn.Module:
    """The run's encoder at initialisation (seeded if ``seed`` is given): its backbone, or for CPC on
    images the library's patch grid around it, whose representation is the mean of the patch latents."""
    if seed is not None:
        torch.manual_seed(seed)
    backbone = build_backbone(cfg["backbone"], data.pretrain.channels, data.pretrain.input_size)
    if cfg["method"] != "cpc":
        return backbone
    from selfsup.methods.cpc import PatchGrid

    return PatchGrid(backbone, cfg["head"]["patch_size"], cfg["head"]["patch_stride"])


def library_encoder(run: Path, cfg: dict[str, Any], data: Datasets) -> nn.Module:
    """The run's trained encoder, from its ``encoder.safetensors``."""
    from safetensors.torch import load_file

    encoder = fresh_encoder(cfg, data)
    encoder.load_state_dict(load_file(str(run / "encoder.safetensors")))
    return encoder


def run_method(method: str, spec: str, data: Datasets, args: argparse.Namespace) -> Row:
    """Per seed: the library run, its random-init backbone and the reference with that backbone, all scored alike."""
    row = Row(method, args.epochs)
    for seed in range(args.seeds):
        out = Path(args.out) / args.data / method / f"seed{seed}"
        settings = [f"train.epochs={args.epochs}", f"backbone.width={args.width}", f"train.seed={seed}",
                    "eval.every=0", "eval.plots=false", "train.progress=false"]
        cfg = make_config(method, spec, data.pretrain, assignments=settings)  # what the run writes, if it fails
        try:
            summary = fit(method, spec, out_dir=out, assignments=settings, datasets=data, overwrite=True)
            cfg = yaml.safe_load((out / "config.yaml").read_text())
        except Exception as err:  # one failing method must not stop the others; its row says why
            traceback.print_exc()
            row.notes.append(f"library failed: {type(err).__name__}: {' '.join(str(err).split())}")
            summary = None
        row.run_k = int(cfg["eval"]["knn_k"])
        row.backbone = f"{cfg['backbone']['name']} w{cfg['backbone'].get('width')}"
        ks = sorted({args.knn_k, row.run_k})
        if summary is not None:
            row.library_s.append(summary["wall_s"])
            add(row.library, scores(library_encoder(out, cfg, data), data, ks, args.knn_t))
            if abs(row.library[row.run_k][-1] - summary["knn_top1"]) > 1e-3:
                row.notes.append(f"seed {seed}: the run's own kNN {summary['knn_top1']:.3f}")
        add(row.random_init, scores(fresh_encoder(cfg, data, seed), data, ks, args.knn_t))
        try:
            torch.manual_seed(seed)
            backbone = build_backbone(cfg["backbone"], data.pretrain.channels, data.pretrain.input_size)
            trained = train_reference(method, backbone, data.pretrain.data, data.pretrain.labels,
                                      data.pretrain.mean, data.pretrain.std, args.epochs, seed)
            row.reference_s.append(trained.wall_s)
            add(row.reference, scores(trained.encoder, data, ks, args.knn_t))
            if not all(map(math.isfinite, trained.losses)):
                row.notes.append(f"seed {seed}: reference loss not finite")
        except Exception as err:
            traceback.print_exc()
            row.notes.append(f"reference failed: {type(err).__name__}: {' '.join(str(err).split())}")
    return row


def mean(values: list[float]) -> float | None:
    return sum(values) / len(values) if values else None


def pair(values: Scores, k: int, run_k: int | None) -> str:
    """Mean over seeds at k, then at the run's k."""
    if k not in values:
        return "—"
    if run_k is None or run_k == k:
        return f"{mean(values[k]):.3f}"
    return f"{mean(values[k]):.3f} / {mean(values[run_k]):.3f}"


def spread(values: Scores, k: int) -> str:
    return f"{min(values[k]):.3f}-{max(values[k]):.3f}" if k in values else "—"


def ratio(a: float | None, b: float | None, digits: int = 2) -> str:
    return f"{a / b:.{digits}f}" if a and b else "—"


def table(rows: list[Row], raw: Scores, k: int, seeds: int) -> str:
    header = ["method", "epochs", "backbone", "run k", f"library kNN @{k} / @run k", "reference kNN",
              "raw pixels", "random init", "library / reference kNN"]
    header += [f"library, reference @{k} over {seeds} seeds"] if seeds > 1 else []
    header += ["library wall s", "reference wall s", "library / reference wall", "notes"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for r in rows:
        library_s, reference_s = mean(r.library_s), mean(r.reference_s)
        cells = [r.method, str(r.epochs), r.backbone or "—", str(r.run_k or "—"), pair(r.library, k, r.run_k),
                 pair(r.reference, k, r.run_k), pair(raw, k, r.run_k), pair(r.random_init, k, r.run_k),
                 ratio(mean(r.library.get(k, [])), mean(r.reference.get(k, [])), 3)]
        cells += [f"{spread(r.library, k)}, {spread(r.reference, k)}"] if seeds > 1 else []
        cells += [f"{library_s:.1f}" if library_s else "—", f"{reference_s:.1f}" if reference_s else "—",
                  ratio(library_s, reference_s), "; ".join(r.notes).replace("|", "/")]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(sys.argv[1:] if argv is None else argv)
    torch.set_num_threads(args.threads)
    names = image_methods() if args.methods == "all" else args.methods.split(",")
    unknown = [n for n in names if n not in REFERENCES]
    if unknown:
        print(f"no reference for {', '.join(unknown)}; choose from {', '.join(REFERENCES)}", file=sys.stderr)
        return 2
    loaded = load_data(args)
    if loaded is None:
        return 0
    spec, data = loaded
    rows: list[Row] = []
    for name in names:
        rows.append(run_method(name, spec, data, args))
        print(json.dumps(rows[-1].__dict__, default=str), flush=True)
    run_ks = sorted({r.run_k for r in rows if r.run_k} | {args.knn_k})
    raw: Scores = {}
    add(raw, scores(nn.Identity(), data, run_ks, args.knn_t))
    when = datetime.datetime.now().strftime("%Y-%m-%d %H:%M")
    print(f"\n{args.data}: {len(data.pretrain)} pretraining / {len(data.test)} test images, {when}, "
          f"{torch.get_num_threads()} thread(s); kNN t={args.knn_t}; cells: '@{args.knn_k} / @run k', "
          f"means over {args.seeds} seed(s); wall: training only\n")
    print(table(rows, raw, args.knn_k, args.seeds))
    return 0


if __name__ == "__main__":
    sys.exit(main())

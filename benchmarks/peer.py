"""selfsup beside lightly 1.6 on CIFAR-10 JPEGs (issue 20): same encoder, views, optimizer, schedule and kNN.

    OMP_NUM_THREADS=1 python benchmarks/peer.py --cifar ../shared/data/cifar10 [--methods simclr,byol,...]
        [--epochs 6] [--width 16] [--batch-size 128] [--train 5000] [--test 1000] [--seed 0]
        [--json runs/peer.jsonl] [--step-timing]
    python benchmarks/peer.py --report runs/peer.jsonl     # the tables again, from the saved runs

Needs lightly (``pip install lightly``) and torchvision; on a CPU-only machine with a CUDA build of torchvision,
the schemas of torchvision's compiled ops are defined first (``tests/torchvision_cpu.py``, never in the library).

For each method and seed, both libraries train for the same epochs from the same encoder weights:
- encoder: selfsup's CIFAR-stem ResNet-18 at ``--width``, built once (seeded) by ``build_backbone`` and
  deep-copied into both sides;
- views: selfsup's batched views (the method's selfsup view preset, made on the uint8 batch) on both sides.
  The same pipeline on both sides is the fairest; selfsup's public API makes its views inside the step from
  the config, so lightly's side calls the same ``build_views`` object instead of lightly's PIL transforms;
- heads, losses, momentum updates, memory bank and prototypes: selfsup's method classes on its side
  (``Trainer`` with ``recipe.fit=false`` and every value pinned in ``SETTINGS``), lightly's modules written as
  in lightly's ``examples/pytorch/<method>.py`` on the other, head sizes set alike (``SETTINGS``);
- optimizer and schedule: one per method, identical on both sides (torch's SGD or Adam, base lr times
  batch/256, per-step cosine to 0 via ``selfsup.config.schedule.warmup_cosine``, no warm-up);
- kNN: one function for both (``benchmarks.reference.common``: eval-mode pooled features of the normalised
  images, selfsup's weighted kNN, k=200, t=0.1), after every epoch; epoch 0 is the shared initialisation.
Numerics: each library's default. selfsup's ``train.precision`` and ``train.channels_last`` are left at ``auto``
(``selfsup.train.numerics``: on a CPU with native bf16, 32 px images train under bf16 autocast, channels-last;
each row records what it resolved to); lightly's examples train in fp32, NCHW. ``--selfsup-set
train.precision=fp32 --selfsup-set train.channels_last=false`` gives selfsup the same numerics as lightly.
Throughput: training only (no kNN), images per wall second and per CPU second (``time.process_time``), an
image being one dataset sample (all its views).

``--step-timing`` times one training step of the bare backbone (two views of the batch, fwd+bwd+SGD) in
fp32, channels_last, bf16 autocast and both.
"""

from __future__ import annotations

import argparse
import copy
import datetime
import json
import math
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, Self

import torch
import torch.nn.functional as F
from torch import Tensor, nn

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from benchmarks.reference.common import encode, knn_scores
from selfsup.config.schedule import warmup_cosine
from selfsup.data.base import Datasets
from selfsup.data.views import build_views
from selfsup.nn.backbones import build_backbone, output_dim
from selfsup.train.setup import make_config
from selfsup.train.trainer import Trainer

METHODS = ["simclr", "byol", "moco", "barlow_twins", "vicreg", "swav"]
SGD = {"name": "sgd", "lr": 0.06, "momentum": 0.9, "weight_decay": 5e-4}  # lr per 256 images
# Per method: selfsup's head / loss / views values, the optimizer both sides use. Head sizes are lightly's
# examples' (512 there is ResNet-18's feature width; "F" here is the encoder's feature width).
SETTINGS: dict[str, dict[str, Any]] = {
    # lightly: SimCLRProjectionHead(F, F, 128) (2 layers), NTXentLoss() (temperature 0.5)
    "simclr": {"head": {"proj_hidden_dim": None, "proj_out_dim": 128, "proj_layers": 2},
               "loss": {"temperature": 0.5}, "views": {"preset": "simclr_cifar"}, "optim": SGD},
    # lightly: BYOLProjectionHead(F, 1024, 256), BYOLPredictionHead(256, 1024, 256), cosine EMA 0.99 -> 1
    "byol": {"head": {"proj_hidden_dim": 1024, "proj_out_dim": 256, "pred_hidden_dim": 1024,
                      "momentum_base": 0.99, "momentum_final": 1.0},
             "loss": {}, "views": {"preset": "byol_cifar"}, "optim": SGD},
    # lightly: MoCoProjectionHead(F, 512, 128), NTXentLoss(0.2, memory_bank_size=(4096, 128)), EMA 0.99
    "moco": {"head": {"proj_hidden_dim": 512, "proj_out_dim": 128, "proj_layers": 2, "queue_size": 4096,
                      "momentum": 0.99, "shuffle_bn": True, "bn_splits": 4},
             "loss": {"temperature": 0.2}, "views": {"preset": "mocov2_cifar"}, "optim": SGD},
    # lightly: BarlowTwinsProjectionHead(F, 2048, 2048) (3 layers), BarlowTwinsLoss(lambda_param=5e-3)
    "barlow_twins": {"head": {"proj_hidden_dim": 2048, "proj_out_dim": 2048, "proj_layers": 3},
                     "loss": {"lambda_offdiag": 0.005, "scale": 1.0}, "views": {"preset": "byol_cifar"}, "optim": SGD},
    # lightly: VICRegProjectionHead(F, 2048, 2048, num_layers=2), VICRegLoss() (25, 25, 1); SGD(lr=0.06) without
    # momentum or weight decay as lightly's vicreg.py (batch 256): with the others' momentum 0.9 both sides diverge
    "vicreg": {"head": {"proj_hidden_dim": 2048, "proj_out_dim": 2048, "proj_layers": 2},
               "loss": {"sim": 25.0, "var": 25.0, "cov": 1.0},
               "views": {"preset": "byol_cifar", "scale": [0.2, 1.0], "solarize_p": 0.1},
               "optim": {"name": "sgd", "lr": 0.06, "momentum": 0.0, "weight_decay": 0.0}},
    # lightly: SwaVProjectionHead(F, 512, 128), SwaVPrototypes(128, 512), SwaVLoss() (0.1, 3 iterations, 0.05),
    # no queue, no frozen prototypes; Adam(lr=1e-3) as lightly's swav.py
    "swav": {"head": {"proj_hidden_dim": 512, "proj_out_dim": 128, "num_prototypes": 512, "queue_size": 0,
                      "queue_start_epoch": 0, "freeze_prototypes_epochs": 0},
             "loss": {"temperature": 0.1, "epsilon": 0.05, "sinkhorn_iters": 3}, "views": {"preset": "swav_cifar"},
             "optim": {"name": "adam", "lr": 1e-3, "weight_decay": 0.0, "scale_lr": False}},
}


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cifar", default=str(REPO.parent / "shared" / "data" / "cifar10"))
    parser.add_argument("--methods", default=",".join(METHODS))
    parser.add_argument("--libraries", default="selfsup,lightly")
    parser.add_argument("--epochs", type=int, default=6)
    parser.add_argument("--width", type=int, default=16)
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--train", type=int, default=5000)
    parser.add_argument("--test", type=int, default=1000)
    parser.add_argument("--seeds", default="0", help="comma list")
    parser.add_argument("--sgd-lr", type=float, default=SGD["lr"],
                        help="SGD's lr per 256 images on both sides (lightly's CIFAR-10 benchmark: 0.06 per 128)")
    parser.add_argument("--knn-k", type=int, default=200)
    parser.add_argument("--knn-t", type=float, default=0.1)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--json", default=str(REPO / "runs" / "peer.jsonl"), help="one line per run, appended")
    parser.add_argument("--selfsup-set", action="append", default=[], metavar="KEY=VALUE",
                        help="a further selfsup config value (e.g. train.channels_last=true), recorded in the row")
    parser.add_argument("--step-timing", action="store_true", help="only time the bare backbone step variants")
    parser.add_argument("--report", action="append", default=[], metavar="JSONL",
                        help="only print the tables of --json files written before; given twice or more, a later "
                             "file's side of a run (same method, seed and sizes) replaces an earlier file's")
    return parser.parse_args(argv)


# ---- data, encoder, kNN ------------------------------------------------------------------------------------

def load_data(folder: str, n_train: int, n_test: int) -> tuple[str, Datasets]:
    from selfsup.data.folder import load_image_folder

    train = load_image_folder(Path(folder), "train", limit=n_train, progress=False, name="cifar10")
    test = load_image_folder(Path(folder), "test", limit=n_test, progress=False, name="cifar10")
    test.mean, test.std = train.mean, train.std
    return f"folder:{folder}", Datasets(pretrain=train, train=train, test=test)


def initial_encoder(width: int, data: Datasets, seed: int) -> nn.Module:
    torch.manual_seed(seed)
    cfg = {"name": "resnet18", "width": width, "stem": "cifar"}
    return build_backbone(cfg, data.pretrain.channels, data.pretrain.input_size)


def knn(encoder: nn.Module, data: Datasets, k: int, t: float) -> float:
    """The one scoring function of both sides: train split as memory, test split scored."""
    mean, std = data.train.mean, data.train.std
    with torch.no_grad():
        train_x, test_x = encode(encoder, data.train.data, mean, std), encode(encoder, data.test.data, mean, std)
    return knn_scores(train_x, data.train.labels, test_x, data.test.labels, [k], t)[k]


class Clock:
    """Training time only: wall (perf_counter) and CPU (process_time) seconds."""

    def __init__(self) -> None:
        self.wall = self.cpu = 0.0

    def __enter__(self) -> Self:
        self._w, self._c = time.perf_counter(), time.process_time()
        return self

    def __exit__(self, *exc: object) -> None:
        self.wall += time.perf_counter() - self._w
        self.cpu += time.process_time() - self._c


# ---- selfsup's side: its Trainer, every value pinned -------------------------------------------------------

def selfsup_config(method: str, spec: str, data: Datasets, args: argparse.Namespace, seed: int) -> dict[str, Any]:
    s = SETTINGS[method]
    optim = {"scale_lr": True, "warmup_epochs": 0, "min_lr_ratio": 0.0, "momentum": 0.9, **s["optim"]}
    overrides = {
        "backbone": {"name": "resnet18", "width": args.width, "stem": "cifar"},
        "head": s["head"], "loss": s["loss"], "views": s["views"], "optim": optim,
        "train": {"epochs": args.epochs, "batch_size": args.batch_size, "seed": seed, "device": "cpu",
                  "progress": False, "tensorboard": False, "checkpoint_every": 10**6},
        "recipe": {"fit": False},
        "eval": {"every": 0, "knn_k": args.knn_k, "knn_t": args.knn_t, "plots": False},
    }
    if method == "moco":
        overrides["train"]["sync_batchnorm"] = False
    return make_config(method, spec, data.pretrain, overrides=overrides, assignments=args.selfsup_set,
                       fit_to_run=False)


def train_selfsup(method: str, spec: str, data: Datasets, init: nn.Module, args: argparse.Namespace, seed: int,
                  on_epoch: Callable[[int, nn.Module, Clock], None]) -> dict[str, Any]:
    cfg = selfsup_config(method, spec, data, args, seed)
    trainer = Trainer(cfg, data, encoder=copy.deepcopy(init))
    clock = Clock()
    for epoch in range(args.epochs):
        with clock:
            trainer._train(args.epochs, epoch + 1)  # the Trainer's own loop, one epoch at a time (no folder)
        on_epoch(epoch + 1, trainer.encoder, clock)
    losses = [row["loss"] for row in trainer.history]
    return {"numerics": {"bf16": trainer.bf16, "channels_last": trainer.channels_last},
            "config": {k: cfg[k] for k in ("backbone", "head", "loss", "views", "optim", "train", "recipe")},
            "losses": losses}


# ---- lightly's side: written as lightly's examples/pytorch/*.py ---------------------------------------------

def import_lightly() -> None:
    sys.path.insert(0, str(REPO / "tests"))
    from torchvision_cpu import import_torchvision

    import_torchvision()
    import lightly  # noqa: F401


class LightlyModel(nn.Module):
    """One of lightly's example models around ``backbone``; ``step`` returns the loss of one batch of views."""

    def __init__(self, method: str, backbone: nn.Module, feature_dim: int, total_steps: int):
        super().__init__()
        from lightly import loss as L
        from lightly.models import modules as M
        from lightly.models.utils import deactivate_requires_grad

        s = SETTINGS[method]
        head, self.method, self.total_steps = s["head"], method, total_steps
        self.backbone = backbone
        if method == "simclr":
            self.projection_head = M.SimCLRProjectionHead(feature_dim, feature_dim, head["proj_out_dim"])
            self.criterion = L.NTXentLoss(temperature=s["loss"]["temperature"])
        elif method == "byol":
            self.projection_head = M.BYOLProjectionHead(feature_dim, head["proj_hidden_dim"], head["proj_out_dim"])
            self.prediction_head = M.BYOLPredictionHead(head["proj_out_dim"], head["pred_hidden_dim"],
                                                        head["proj_out_dim"])
            self.criterion = L.NegativeCosineSimilarity()
        elif method == "moco":
            self.projection_head = M.MoCoProjectionHead(feature_dim, head["proj_hidden_dim"], head["proj_out_dim"])
            self.criterion = L.NTXentLoss(temperature=s["loss"]["temperature"],
                                          memory_bank_size=(head["queue_size"], head["proj_out_dim"]))
        elif method == "barlow_twins":
            self.projection_head = M.BarlowTwinsProjectionHead(feature_dim, head["proj_hidden_dim"],
                                                               head["proj_out_dim"])
            self.criterion = L.BarlowTwinsLoss(lambda_param=s["loss"]["lambda_offdiag"])
        elif method == "vicreg":
            self.projection_head = M.heads.VICRegProjectionHead(
                input_dim=feature_dim, hidden_dim=head["proj_hidden_dim"], output_dim=head["proj_out_dim"],
                num_layers=head["proj_layers"])
            self.criterion = L.VICRegLoss(lambda_param=s["loss"]["sim"], mu_param=s["loss"]["var"],
                                          nu_param=s["loss"]["cov"])
        elif method == "swav":
            self.projection_head = M.SwaVProjectionHead(feature_dim, head["proj_hidden_dim"], head["proj_out_dim"])
            self.prototypes = M.SwaVPrototypes(head["proj_out_dim"], n_prototypes=head["num_prototypes"])
            self.criterion = L.SwaVLoss(temperature=s["loss"]["temperature"],
                                        sinkhorn_iterations=s["loss"]["sinkhorn_iters"],
                                        sinkhorn_epsilon=s["loss"]["epsilon"])
        else:
            raise ValueError(f"no lightly model for {method}")
        if method in ("byol", "moco"):
            self.backbone_momentum = copy.deepcopy(self.backbone)
            self.projection_head_momentum = copy.deepcopy(self.projection_head)
            deactivate_requires_grad(self.backbone_momentum)
            deactivate_requires_grad(self.projection_head_momentum)

    def forward(self, x: Tensor) -> Tensor:
        z = self.projection_head(self.backbone(x).flatten(start_dim=1))
        if self.method == "byol":
            return self.prediction_head(z)
        if self.method == "swav":
            return self.prototypes(F.normalize(z, dim=1, p=2))
        return z

    def forward_momentum(self, x: Tensor) -> Tensor:
        return self.projection_head_momentum(self.backbone_momentum(x).flatten(start_dim=1)).detach()

    def step(self, views: list[Tensor], step: int) -> Tensor:
        from lightly.models.utils import update_momentum
        from lightly.utils.scheduler import cosine_schedule

        if self.method in ("simclr", "barlow_twins", "vicreg"):  # simclr.py, barlowtwins.py, vicreg.py
            return self.criterion(self(views[0]), self(views[1]))
        if self.method == "byol":  # byol.py, with the momentum scheduled per step instead of per epoch
            head = SETTINGS["byol"]["head"]
            m = cosine_schedule(step, self.total_steps, head["momentum_base"], head["momentum_final"])
            update_momentum(self.backbone, self.backbone_momentum, m=m)
            update_momentum(self.projection_head, self.projection_head_momentum, m=m)
            p0, z0 = self(views[0]), self.forward_momentum(views[0])
            p1, z1 = self(views[1]), self.forward_momentum(views[1])
            return 0.5 * (self.criterion(p0, z1) + self.criterion(p1, z0))
        if self.method == "moco":  # moco.py, with selfsup's constant momentum instead of a cosine schedule
            m = SETTINGS["moco"]["head"]["momentum"]
            update_momentum(self.backbone, self.backbone_momentum, m=m)
            update_momentum(self.projection_head, self.projection_head_momentum, m=m)
            return self.criterion(self(views[0]), self.forward_momentum(views[1]))
        # swav.py
        self.prototypes.normalize()
        outputs = [self(view) for view in views]
        return self.criterion(outputs[:2], outputs[2:])


def lightly_optimizer(model: nn.Module, method: str, batch: int) -> tuple[torch.optim.Optimizer, float]:
    o = SETTINGS[method]["optim"]
    lr = o["lr"] * (batch / 256 if o.get("scale_lr", True) else 1.0)
    if o["name"] == "sgd":
        return torch.optim.SGD(model.parameters(), lr=lr, momentum=o["momentum"], weight_decay=o["weight_decay"]), lr
    return torch.optim.Adam(model.parameters(), lr=lr, weight_decay=o["weight_decay"]), lr


def train_lightly(method: str, data: Datasets, init: nn.Module, args: argparse.Namespace, seed: int,
                  on_epoch: Callable[[int, nn.Module, Clock], None]) -> dict[str, Any]:
    torch.manual_seed(seed)
    backbone = copy.deepcopy(init)
    feature_dim = output_dim(backbone, torch.zeros((2,) + tuple(data.pretrain.data.shape[1:])))
    steps_per_epoch = len(data.pretrain) // args.batch_size
    total = steps_per_epoch * args.epochs
    model = LightlyModel(method, backbone, feature_dim, total)
    optimizer, base_lr = lightly_optimizer(model, method, args.batch_size)
    views = build_views(SETTINGS[method]["views"], data.pretrain.channels, data.pretrain.input_size,
                        data.pretrain.mean, data.pretrain.std)
    images = data.pretrain.data
    clock, step, losses = Clock(), 0, []
    for epoch in range(args.epochs):
        with clock:
            model.train()
            order = torch.randperm(len(images))
            total_loss = torch.zeros(())
            for i in range(steps_per_epoch):
                for group in optimizer.param_groups:
                    group["lr"] = base_lr * warmup_cosine(step, total, 0, 0.0)
                batch = images[order[i * args.batch_size:(i + 1) * args.batch_size]]
                loss = model.step(views(batch), step)
                total_loss += loss.detach().reshape(())
                loss.backward()
                optimizer.step()
                optimizer.zero_grad()
                step += 1
            losses.append(float(total_loss) / steps_per_epoch)
        on_epoch(epoch + 1, model.backbone, clock)
    return {"losses": losses}



# ---- one (method, seed) ----------------------------------------------------------------------------------

def run_pair(method: str, spec: str, data: Datasets, args: argparse.Namespace, seed: int, raw: float,
             libraries: list[str]) -> dict[str, Any]:
    init = initial_encoder(args.width, data, seed)
    random_init = knn(init, data, args.knn_k, args.knn_t)
    row: dict[str, Any] = {"method": method, "seed": seed, "epochs": args.epochs, "width": args.width,
                           "selfsup_set": args.selfsup_set, "sgd_lr": SGD["lr"],
                           "batch": args.batch_size, "train": len(data.pretrain), "test": len(data.test),
                           "raw_pixels": raw, "random_init": random_init}
    images = len(data.pretrain) // args.batch_size * args.batch_size  # images trained per epoch
    for library in libraries:
        curve: list[float] = [random_init]
        timing: dict[str, float] = {}

        def on_epoch(epoch: int, encoder: nn.Module, clock: Clock, curve: list[float] = curve,
                     timing: dict[str, float] = timing, library: str = library) -> None:
            curve.append(knn(encoder, data, args.knn_k, args.knn_t))
            timing.update(wall=clock.wall, cpu=clock.cpu)
            print(f"  {library:<8} {method:<13} epoch {epoch}: kNN {curve[-1]:.4f}  train wall {clock.wall:.1f} s "
                  f"cpu {clock.cpu:.1f} s", flush=True)

        try:
            if library == "selfsup":
                extra = train_selfsup(method, spec, data, init, args, seed, on_epoch)
            else:
                extra = train_lightly(method, data, init, args, seed, on_epoch)
        except Exception as err:  # noqa: BLE001 (one failing side must not stop the others)
            import traceback

            traceback.print_exc()
            row[library] = {"error": f"{type(err).__name__}: {err}"}
            continue
        n = images * len(curve[1:])
        row[library] = {"knn": curve[-1], "curve": curve, "wall_s": timing["wall"], "cpu_s": timing["cpu"],
                        "images_per_s": n / timing["wall"], "images_per_cpu_s": n / timing["cpu"], **extra}
    return row


def merged_rows(paths: list[str]) -> list[dict[str, Any]]:
    """The rows of several --json files, one per run: a later file's library side replaces an earlier one's."""
    runs: dict[tuple, dict[str, Any]] = {}
    for path in paths:
        for line in Path(path).read_text().splitlines():
            if line.strip():
                row = json.loads(line)
                key = tuple(row[k] for k in ("method", "seed", "epochs", "width", "batch", "train", "test"))
                key += (row.get("sgd_lr", SGD["lr"]),)
                runs.setdefault(key, {}).update(row)
    return list(runs.values())


# ---- the table -------------------------------------------------------------------------------------------

def fmt(value: float | None, digits: int = 3) -> str:
    return "—" if value is None or (isinstance(value, float) and math.isnan(value)) else f"{value:.{digits}f}"


def table(rows: list[dict[str, Any]]) -> str:
    header = ["method", "seed", "kNN@200 selfsup", "kNN@200 lightly", "selfsup / lightly kNN", "raw pixels",
              "random init", "selfsup img/s", "lightly img/s", "selfsup img/CPU-s", "lightly img/CPU-s",
              "selfsup / lightly img/CPU-s"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for r in rows:
        s, lt = r.get("selfsup", {}), r.get("lightly", {})
        ks, kl = s.get("knn"), lt.get("knn")
        cs, cl = s.get("images_per_cpu_s"), lt.get("images_per_cpu_s")
        cells = [r["method"], str(r["seed"]), fmt(ks), fmt(kl), fmt(ks / kl if ks and kl else None),
                 fmt(r["raw_pixels"]), fmt(r["random_init"]), fmt(s.get("images_per_s"), 1),
                 fmt(lt.get("images_per_s"), 1), fmt(cs, 1), fmt(cl, 1), fmt(cs / cl if cs and cl else None, 2)]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def seed_summary(rows: list[dict[str, Any]]) -> str:
    """Per method: each side's kNN mean and standard deviation over seeds, and the issue's goal: selfsup >=
    lightly - one seed standard deviation (pooled over the two sides: the root of their mean variance)."""
    header = ["method", "seeds", "selfsup kNN mean ± sd", "lightly kNN mean ± sd", "selfsup - lightly",
              "pooled sd", "goal: difference >= -sd", "selfsup / lightly img/CPU-s (mean)"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for method in dict.fromkeys(r["method"] for r in rows):
        both = [r for r in rows if r["method"] == method and "knn" in r.get("selfsup", {})
                and "knn" in r.get("lightly", {})]
        if len(both) < 2:
            lines.append(f"| {method} | {len(both)} | | | | | under 2 seeds finished on both sides | |")
            continue
        ours, theirs = [r["selfsup"]["knn"] for r in both], [r["lightly"]["knn"] for r in both]
        sd = math.sqrt((statistics.variance(ours) + statistics.variance(theirs)) / 2)
        gap = statistics.mean(ours) - statistics.mean(theirs)
        speed = statistics.mean(r["selfsup"]["images_per_cpu_s"] / r["lightly"]["images_per_cpu_s"] for r in both)
        cells = [method, str(len(both)), f"{statistics.mean(ours):.3f} ± {statistics.stdev(ours):.3f}",
                 f"{statistics.mean(theirs):.3f} ± {statistics.stdev(theirs):.3f}", f"{gap:+.3f}", f"{sd:.3f}",
                 "met" if gap >= -sd else "NOT met", f"{speed:.2f}"]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def curves(rows: list[dict[str, Any]]) -> str:
    epochs = max(r["epochs"] for r in rows)
    header = ["method", "library"] + [f"ep {e}" for e in range(epochs + 1)]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for r in rows:
        for library in ("selfsup", "lightly"):
            curve = r.get(library, {}).get("curve")
            if curve:
                lines.append("| " + " | ".join([r["method"], library] + [f"{v:.3f}" for v in curve]) + " |")
    return "\n".join(lines)


# ---- the backbone step under fp32 / channels_last / bf16 --------------------------------------------------

def step_timing(args: argparse.Namespace, data: Datasets, repeats: int = 6) -> dict[str, dict[str, float]]:
    """Median ms of one step of the bare backbone (two views of ``--batch-size``, fwd+bwd+SGD), per variant."""
    variants = {"fp32": (False, False), "channels_last": (True, False), "bf16 autocast": (False, True),
                "bf16 + channels_last": (True, True)}
    views = build_views({"preset": "simclr_cifar"}, data.pretrain.channels, data.pretrain.input_size,
                        data.pretrain.mean, data.pretrain.std)
    x = torch.cat(views(data.pretrain.data[: args.batch_size]))
    results: dict[str, dict[str, float]] = {n: {"wall": [], "cpu": []} for n in variants}  # type: ignore[misc]
    models = {}
    for name, (cl, _) in variants.items():
        model = initial_encoder(args.width, data, 0)
        models[name] = model.to(memory_format=torch.channels_last) if cl else model
    opts = {name: torch.optim.SGD(m.parameters(), lr=0.01, momentum=0.9) for name, m in models.items()}
    for r in range(repeats + 2):  # rounds, variants alternated; the first two are warm-up
        for name, (cl, bf16) in variants.items():
            inp = x.contiguous(memory_format=torch.channels_last) if cl else x
            w, c = time.perf_counter(), time.process_time()
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
                out = models[name](inp)
            out.float().pow(2).mean().backward()
            opts[name].step()
            opts[name].zero_grad()
            if r >= 2:
                results[name]["wall"].append(1000 * (time.perf_counter() - w))  # type: ignore[attr-defined]
                results[name]["cpu"].append(1000 * (time.process_time() - c))  # type: ignore[attr-defined]
    return {n: {"wall_ms": statistics.median(v["wall"]), "cpu_ms": statistics.median(v["cpu"]),
                "min_cpu_ms": min(v["cpu"])} for n, v in results.items()}


def main(argv: list[str] | None = None) -> int:
    args = parse_args(sys.argv[1:] if argv is None else argv)
    torch.set_num_threads(args.threads)
    if args.report:
        rows = merged_rows(args.report)
        print(table(rows) + "\n\nOver seeds\n\n" + seed_summary(rows)
              + "\n\nkNN@200 per epoch (epoch 0: the shared initialisation)\n\n" + curves(rows))
        return 0
    spec, data = load_data(args.cifar, args.train, args.test)
    if args.step_timing:
        timing = step_timing(args, data)
        print(f"bare backbone step, resnet18 w{args.width}, 2 x {args.batch_size} images of 32 px, "
              f"{torch.get_num_threads()} thread(s), median of 6 (ms):")
        base = timing["fp32"]["cpu_ms"]
        for name, t in timing.items():
            print(f"  {name:<22} wall {t['wall_ms']:8.1f}  cpu {t['cpu_ms']:8.1f} (min {t['min_cpu_ms']:.1f})  "
                  f"fp32 / this (cpu) {base / t['cpu_ms']:.2f}")
        return 0
    SGD["lr"] = args.sgd_lr
    import_lightly()
    libraries = args.libraries.split(",")
    raw = knn(nn.Identity(), data, args.knn_k, args.knn_t)
    print(f"{len(data.pretrain)} train / {len(data.test)} test images; raw pixels kNN@{args.knn_k} {raw:.4f}",
          flush=True)
    rows = []
    out = Path(args.json)
    out.parent.mkdir(parents=True, exist_ok=True)
    for method in args.methods.split(","):
        for seed in map(int, args.seeds.split(",")):
            print(f"=== {method} seed {seed}", flush=True)
            rows.append(run_pair(method, spec, data, args, seed, raw, libraries))
            with out.open("a") as f:
                f.write(json.dumps(rows[-1], default=str) + "\n")
    import lightly

    when = datetime.datetime.now().strftime("%Y-%m-%d %H:%M")
    print(f"\n{when}, selfsup vs lightly {lightly.__version__}, torch {torch.__version__}, "
          f"{torch.get_num_threads()} thread(s), resnet18 w{args.width}, batch {args.batch_size}, "
          f"{args.epochs} epochs, {len(data.pretrain)} / {len(data.test)} images\n")
    print(table(rows))
    print("\nOver seeds\n")
    print(seed_summary(rows))
    print("\nkNN@200 per epoch (epoch 0: the shared initialisation)\n")
    print(curves(rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Every method learns on digits against a strong baseline, and scores clearly worse when it is broken.

Each method trains on scikit-learn's digits for 20 epochs at width 16 with the library's defaults,
which the recipe fits to this short run (``train.recipe``: the small convnet, warm-up, batch,
memories, EMA, prototypes, LARS travel); heads at the papers' widths (2048-4096) are cut to 512, where they
cost 3-4 times the backbone (``EXTRA``). Held-out weighted kNN is read at k = 200, t = 0.1: there raw pixels
score 0.959 and the untrained convnet 0.887 (at the recipe's k = 19 an untrained convnet already scores 0.96
and hides a method that stops learning).

Margins come from seeds 0-4 of these settings (``python benchmarks/learn_seeds.py``, 2026-12-03; CI runs seed
0). Real kNN by seed, then each mutation's loss below the real run of the same seed:

    method         real kNN, seeds 0-4            mutation: loss by seed                                 margin
    simclr         .954 .956 .959 .963 .961       positive of another image: .113 .154 .124 .131 .141    .055
    supcon         .980 .983 .983 .987 .987       labels shuffled: .102 .144 .098 .120 .143              .045
    moco           .943 .928 .931 .931 .941       queue never written: .035 .059 .031 .044 .037          .015
    mocov1         .969 .937 .959 .952 .959       queue never written: .054 .048 .057 .063 .059          .020
    mocov3         .956 .935 .944 .948 .957       positive of another image: .135 .226 .156 .185 .215    .065
    adco           .948 .943 .948 .939 .937       positive of another image, z std ratio: .88 .88 .87 .87 .84  .415
    cpc            .628 .661 .632 .640 .653       future of another series: .128 .165 .132 .132 .215     .060
    dim            .850 .876 .869 .817 .820       global vector of another image: .067 .087 .052 .037 .111  .015
    swav           .961 .956 .954 .972 .963       no equipartition: .359 .389 .241 .406 .454             .120
                                                  positive of another image: .481 .535 .535 .563 .519    .240
    deepclusterv2  .970 .944 .963 .956 .957       memory never written: .059 .050 .065 .059 .059         .020
                                                  random assignments: .404 .431 .319 .281 .378           .140
    byol           .952 .935 .913 .931 .922       target = online, effective rank: 12.1 12.5 13.3 12.4 12.4  5
    simsiam        .915 .865 .883 .876 .887       no stop-gradient, effective rank: 42 48 50 38 66       15
    barlow_twins   .935 .941 .922 .931 .924       no off-diagonal term: .093 .144 .102 .139 .109         .045
    wmse           .941 .931 .950 .939 .950       no whitening, effective rank: 36.1 36.2 35.8 35.7 35.9  15
    vicreg         .948 .952 .959 .969 .959       no variance term: .283 .233 .341 .261 .448             .115

- The bar is raw pixels, less ``MARGIN_TO_PIXELS`` (0.06: every seed of every method above clears it, the
  lowest by 0.014). SimSiam only holds its untrained convnet's kNN on digits in 20 epochs (0.865-0.915 against
  0.887), so its bar is set from its spread (0.11 below pixels) and the test holds it to its stop-gradient.
  Deep InfoMax does not reach raw pixels on 8 px digits at this budget either (0.817-0.876): it must match the
  compact reference written from its paper (``benchmarks/reference``) with the same backbone and budget, less
  ``MARGIN_TO_REFERENCE``; on CIFAR-10 it does beat its untrained encoder (benchmarks/RESULTS.md). InstDisc
  trains the ResNet-18 there (in 20 epochs it does not lift the convnet above its untrained kNN), which it takes
  from 0.18 to 0.66-0.89 (20 seeds, sd 0.07): it must beat its untrained encoder by ``ABOVE_RANDOM_INIT`` on the
  mean of ``SEEDS``. That it equals its reference is shown step by step, bit for bit, in
  ``tests/test_reference_equivalence.py``. CPC, a sequence method first, runs on UCR OSULeaf (200 series of 427
  steps, 6 classes), where it beats the raw series.
- Each mutation (``MUTATIONS``) breaks the method's own mechanism where digits can tell, and its pairing
  otherwise. It must lose at least ``MUTANT_MARGINS``, about half its smallest loss over the five seeds, on kNN
  or on the monitor where the breakage shows on every seed: BYOL with its target equal to the online network,
  SimSiam without stop-gradient and W-MSE without whitening lose a third to four fifths of their embeddings'
  effective rank; AdCo fed another image's key as its positive keeps its kNN within 0.02 on one seed but its
  embeddings' std ratio falls from 0.94 to 0.07.
- Not measurable on digits (``NOT_MEASURABLE_ON_DIGITS``, seeds 0-1, mutant vs real): BYOL without predictor
  .959/.937 vs .952/.935; MoCo v3 without predictor .965/.941 and with its target equal to the online network
  .954/.937 vs .956/.935 (its in-batch negatives alone prevent collapse); AdCo with negatives never updated
  .950/.933 vs .948/.943 (the batch's keys are negatives too), and with the paper's objective (no batch keys)
  never-updated negatives score higher on all five seeds (0.917-0.941 vs 0.867-0.909): on 1,257 digits the
  adversaries become same-class images. MoCo's positive of another image loses only 0.011 on seed 1.

The real run of a method is shared by its tests (``real_run``): ``--dist loadfile`` keeps a module on one worker.
"""

from __future__ import annotations

import json
import sys
import tempfile
from contextlib import contextmanager
from functools import lru_cache
from pathlib import Path
from typing import Callable, Iterator

import pytest
import torch

from selfsup import methods
from selfsup.commands.demo import demo
from selfsup.commands.evaluation import random_init_knn
from selfsup.data.views import ViewMaker
from selfsup.evaluate.scoring import pixel_knn, score_encoder
from selfsup.nn.backbones import build_backbone
from selfsup.train.setup import load_datasets, make_config
from selfsup.train.trainer import fit
from tests.helpers import QUIET, digits

SETTINGS = ["backbone.width=16", "train.epochs=20", "eval.knn_k=200", "eval.knn_t=0.1", "eval.monitor_batches=1"]
SMALL_HEAD = ["head.proj_hidden_dim=512", "head.proj_out_dim=512"]
SMALL_PREDICTOR = ["head.proj_hidden_dim=512", "head.pred_hidden_dim=512"]
# Heads at the papers' widths (2048-4096) on a width-16 convnet took 3-4 times the backbone's time.
EXTRA = {
    "dim": ["head.mi_units=256"],  # 2048 local MI units over every feature-map cell: 50 s a run on CPU
    "barlow_twins": SMALL_HEAD, "vicreg": SMALL_HEAD,
    "byol": SMALL_PREDICTOR, "mocov3": SMALL_PREDICTOR, "swav": ["head.proj_hidden_dim=512"],
    "instdisc": ["backbone.name=resnet18", "backbone.stem=cifar"],
}
DATA = {"cpc": ("ucr:OSULeaf", ["train.epochs=30", "eval.monitor_batches=1"])}  # k: the recipe's 5
MARGIN_TO_PIXELS = {"simsiam": 0.11}  # 0.06 for every other method
MARGIN_TO_REFERENCE = 0.03
BELOW_PIXELS = {"dim"}
# InstDisc's ResNet on 8 px digits spreads sd 0.07 between seeds (0.66-0.89 over 20): judged on the mean of five.
# Seeds 0-4 measured with these settings: 0.787 0.700 0.761 0.704 0.796 (mean 0.750; untrained ResNet 0.18), the
# bank never written 0.587 0.735 0.519 0.511 0.646 (mean 0.600; it beats the real run on seed 1).
SEEDS = {"instdisc": (0, 1, 2, 3, 4)}
ABOVE_RANDOM_INIT = {"instdisc": 0.30}
IMAGE_METHODS = [name for name, cls in methods.available().items() if cls.data_kind != "sequence"]


@contextmanager
def patched(target: object, name: str, wrap: Callable) -> Iterator[None]:
    """``target.name`` replaced by ``wrap(original)`` for the duration."""
    original = getattr(target, name)
    setattr(target, name, wrap(original))
    try:
        yield
    finally:
        setattr(target, name, original)


def views_of_different_images():
    """Every view after the first shows the next image of the batch: each positive pairs two images."""
    def wrap(original):
        def make_views(self, batch):
            views = original(self, batch)
            return views[:1] + [v.roll(1, dims=0) for v in views[1:]]
        return make_views
    return patched(ViewMaker, "__call__", wrap)


def in_method_module(method: str, function: str, wrap: Callable):
    """``function`` as the method's own module calls it, replaced by ``wrap(original)``."""
    return patched(__import__(f"selfsup.methods.{method}", fromlist=["_"]), function, wrap)


def no_stop_gradient(method: str):
    """D(p, z) with the gradient flowing into z too."""
    def wrap(original):
        return lambda p, z: -torch.nn.functional.cosine_similarity(p, z, dim=-1).mean()
    return in_method_module(method, "negative_cosine", wrap)


def second_argument_of_another_image(method: str, function: str):
    """The loss gets another image's second tensor (latents to predict, global vector): rows are rolled by
    half the batch, so rows ordered (image, column) land on the same column of another image."""
    def wrap(original):
        def loss(first, second, *args, **kwargs):
            return original(first, second.roll(second.shape[0] // 2, dims=0), *args, **kwargs)
        return loss
    return in_method_module(method, function, wrap)


def with_settings(*assignments: str):
    """The method trained with ``assignments`` added to its test settings (a term's weight, a learning rate)."""
    return patched(sys.modules[__name__], "MUTANT_SETTINGS", lambda original: list(assignments))


def without_predictor(method: str, cls_name: str):
    """The online branch's predictor replaced by the identity: the projection itself matches the target."""
    cls = getattr(__import__(f"selfsup.methods.{method}", fromlist=["_"]), cls_name)

    def wrap(original):
        def init(self, *args, **kwargs):
            original(self, *args, **kwargs)
            self.predictor = torch.nn.Identity()
        return init
    return patched(cls, "__init__", wrap)


def labels_shuffled():
    """SupCon's positives from the batch's labels in a random order: same class sizes, wrong images."""
    from selfsup.methods.supcon import SupCon

    def wrap(original):
        def forward(self, views, labels=None, indices=None):
            return original(self, views, labels[torch.randperm(labels.shape[0], device=labels.device)], indices)
        return forward
    return patched(SupCon, "forward", wrap)


def target_is_online():
    """The EMA momentum 0 throughout: after every step the target network is a copy of the online one."""
    return with_settings("head.momentum_base=0", "head.momentum_final=0")


def random_assignments():
    """DeepCluster v2's k-means keeps its centroids but hands every sample a random cluster."""
    def wrap(original):
        def kmeans(x, k, iters, generator):
            centroids, _ = original(x, k, iters, generator)
            return centroids, torch.randint(k, (x.shape[0],), generator=generator).to(x.device)
        return kmeans
    return in_method_module("deepclusterv2", "spherical_kmeans", wrap)


def never_written(cls: type, method_name: str):
    """A memory's write (queue enqueue, bank or feature-memory update) does nothing."""
    return patched(cls, method_name, lambda original: lambda *args, **kwargs: None)


def no_equipartition():
    """Codes from a plain softmax of the scores instead of Sinkhorn-Knopp's equal-size assignment."""
    import selfsup.losses.clustering as clustering

    def wrap(original):
        return lambda scores, epsilon=0.05, iters=3, gather=False: torch.softmax(scores.float() / epsilon, dim=1)
    return patched(clustering, "sinkhorn_knopp", wrap)


def no_whitening():
    """W-MSE's whitening replaced by centring alone."""
    import selfsup.losses.infomax as infomax

    return patched(infomax, "whiten", lambda original: lambda x, *args, **kwargs: x - x.mean(0))


def _queue():
    from selfsup.nn.memory import Queue

    return never_written(Queue, "enqueue")


def _bank():
    from selfsup.nn.memory import MemoryBank

    return never_written(MemoryBank, "update")


def _deepcluster_memory():
    from selfsup.methods.deepclusterv2 import DeepClusterV2

    return never_written(DeepClusterV2, "on_step_end")


MUTATIONS: dict[str, dict[str, Callable]] = {
    "simclr": {"positive_of_another_image": views_of_different_images},
    "supcon": {"labels_shuffled": labels_shuffled},
    "moco": {"queue_never_written": _queue},
    "mocov1": {"queue_never_written": _queue},
    "mocov3": {"positive_of_another_image": views_of_different_images},
    "instdisc": {"bank_never_written": _bank},
    "adco": {"positive_of_another_image": views_of_different_images},
    "cpc": {"future_of_another_series": lambda: second_argument_of_another_image("cpc", "cpc")},
    "dim": {"global_vector_of_another_image": lambda: second_argument_of_another_image("dim", "deep_infomax")},
    "swav": {"no_equipartition": no_equipartition, "positive_of_another_image": views_of_different_images},
    "deepclusterv2": {"memory_never_written": _deepcluster_memory, "random_assignments": random_assignments},
    "byol": {"target_is_online": target_is_online},
    "simsiam": {"no_stop_gradient": lambda: no_stop_gradient("simsiam")},
    "barlow_twins": {"no_off_diagonal": lambda: with_settings("loss.lambda_offdiag=0")},
    "wmse": {"no_whitening": no_whitening},
    "vicreg": {"no_variance": lambda: with_settings("loss.var=0")},
}
# Mutations of a method's own mechanism that digits cannot tell from the real method (seed spreads in the module
# docstring): measured by benchmarks/learn_seeds.py, not asserted.
NOT_MEASURABLE_ON_DIGITS: dict[str, dict[str, Callable]] = {
    "byol": {"no_predictor": lambda: without_predictor("byol", "BYOL")},
    "mocov3": {"no_predictor": lambda: without_predictor("mocov3", "MoCoV3"),
               "target_is_online": target_is_online},
    "adco": {"negatives_never_updated": lambda: with_settings("head.negatives_lr=0")},
    "moco": {"positive_of_another_image": views_of_different_images},
}
MUTANT_SETTINGS: list[str] = []
# The least each mutant must lose (module docstring): (what is read, margin); "knn": the held-out kNN.
MUTANT_MARGINS: dict[tuple[str, str], tuple[str, float]] = {
    ("simclr", "positive_of_another_image"): ("knn", 0.055), ("supcon", "labels_shuffled"): ("knn", 0.045),
    ("moco", "queue_never_written"): ("knn", 0.015), ("mocov1", "queue_never_written"): ("knn", 0.02),
    ("mocov3", "positive_of_another_image"): ("knn", 0.065), ("instdisc", "bank_never_written"): ("knn", 0.03),
    ("adco", "positive_of_another_image"): ("z_std_ratio", 0.415), ("cpc", "future_of_another_series"): ("knn", 0.06),
    ("dim", "global_vector_of_another_image"): ("knn", 0.015), ("swav", "no_equipartition"): ("knn", 0.12),
    ("swav", "positive_of_another_image"): ("knn", 0.24), ("deepclusterv2", "memory_never_written"): ("knn", 0.02),
    ("deepclusterv2", "random_assignments"): ("knn", 0.14), ("byol", "target_is_online"): ("effective_rank", 5.0),
    ("simsiam", "no_stop_gradient"): ("effective_rank", 15.0), ("barlow_twins", "no_off_diagonal"): ("knn", 0.045),
    ("wmse", "no_whitening"): ("effective_rank", 15.0), ("vicreg", "no_variance"): ("knn", 0.115),
}


def settings(method: str) -> tuple[str, list[str]]:
    """The data SPEC and ``--set`` assignments a method's tests train with."""
    spec, assignments = DATA.get(method, ("digits", SETTINGS + EXTRA.get(method, [])))
    return spec, assignments + MUTANT_SETTINGS


@lru_cache(maxsize=None)
def datasets(spec: str):
    return digits() if spec == "digits" else load_datasets(spec, None)


def train(method: str, out: Path, seed: int = 0) -> tuple[float, dict]:
    """Held-out kNN and the last metrics row of ``method`` trained with its test settings and ``seed``."""
    spec, assignments = settings(method)
    summary = fit(method, spec, out_dir=out, assignments=QUIET + assignments + [f"train.seed={seed}"],
                  datasets=datasets(spec))
    last = json.loads((out / "metrics.jsonl").read_text().splitlines()[-1])
    return summary["knn_top1"], last


def mean_knn(method: str) -> tuple[float, dict]:
    """kNN averaged over the method's ``SEEDS``, and the last metrics row of the first seed's run."""
    runs = []
    for seed in SEEDS.get(method, (0,)):
        with tempfile.TemporaryDirectory() as out:
            runs.append(train(method, Path(out), seed))
    return sum(knn for knn, _ in runs) / len(runs), runs[0][1]


@lru_cache(maxsize=None)
def real_run(method: str) -> tuple[float, dict]:
    return mean_knn(method)


def reference_knn(method: str) -> float:
    """kNN of the compact reference (benchmarks/reference) on the same backbone, budget and seeds (mean)."""
    from benchmarks.reference import train_reference

    data = digits()
    cfg = make_config(method, "digits", data.pretrain, assignments=settings(method)[1])
    scores = []
    for seed in SEEDS.get(method, (0,)):
        torch.manual_seed(seed)
        backbone = build_backbone(cfg["backbone"], data.pretrain.channels, data.pretrain.input_size)
        trained = train_reference(method, backbone, data.pretrain.data, data.pretrain.labels, data.pretrain.mean,
                                  data.pretrain.std, epochs=cfg["train"]["epochs"], seed=seed)
        scores.append(score_encoder(trained.encoder, data, cfg, torch.device("cpu"))[0]["knn_top1"])
    return sum(scores) / len(scores)


def test_every_image_method_has_a_mutation():
    assert set(IMAGE_METHODS) <= set(MUTATIONS)


@pytest.mark.parametrize("method", IMAGE_METHODS)
def test_learns_against_a_strong_baseline_without_collapse(method):
    knn, last = real_run(method)
    spec, assignments = settings(method)
    if method in ABOVE_RANDOM_INIT:
        cfg = make_config(method, spec, datasets(spec).pretrain, assignments=assignments)
        untrained = random_init_knn(cfg, datasets(spec), torch.device("cpu"))
        assert knn >= untrained + ABOVE_RANDOM_INIT[method], (method, knn, untrained)
    elif method in BELOW_PIXELS:
        reference = reference_knn(method)
        assert knn >= reference - MARGIN_TO_REFERENCE, (method, knn, reference)
    else:
        evaluation = make_config(method, spec, datasets(spec).pretrain, assignments=assignments)["eval"]
        pixels = pixel_knn(datasets(spec), k=evaluation["knn_k"], temperature=evaluation["knn_t"])
        assert knn >= pixels - MARGIN_TO_PIXELS.get(method, 0.06), (method, knn, pixels)
    assert last["effective_rank"] > 4 and last["z_std_ratio"] > 0.05, last


@pytest.mark.parametrize(
    "method, mutation",
    [(m, name) for m in MUTATIONS for name in MUTATIONS[m]],
)
def test_a_broken_method_scores_clearly_worse(method, mutation):
    metric, margin = MUTANT_MARGINS[method, mutation]
    with MUTATIONS[method][mutation]():
        broken_knn, broken_last = mean_knn(method)
    real_knn, real_last = real_run(method)
    broken, real = (broken_knn, real_knn) if metric == "knn" else (broken_last[metric], real_last[metric])
    assert broken <= real - margin, (method, mutation, metric, broken, real)


def test_every_mutation_has_a_measured_margin():
    assert set(MUTANT_MARGINS) == {(m, name) for m in MUTATIONS for name in MUTATIONS[m]}


def test_the_demo_beats_raw_pixels_and_reaches_98_percent(tmp_path):
    """`selfsup demo`'s own settings (60 epochs, width 16, one thread, the recipe's k)."""
    result = demo(tmp_path / "demo", progress=False)
    assert result["knn_trained"] >= max(0.98, result["knn_raw_pixels"]), result
    assert (tmp_path / "demo" / "curves.png").is_file() and (tmp_path / "demo" / "embedding_map.png").is_file()

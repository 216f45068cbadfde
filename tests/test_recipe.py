"""The recipe: papers' numbers fitted to short runs and small data, never over what the user set."""

import copy
import io
import tarfile
from functools import lru_cache

import numpy as np
import pytest
import torch
import yaml
from PIL import Image

from selfsup import methods
from selfsup.config.build import build_config, scale_of
from selfsup.config.recipe import describe, explicit_keys
from selfsup.data import ArrayDataset, load_dataset
from selfsup.train.setup import make_config, validate
from selfsup.train.trainer import fit
from tests.helpers import QUIET, digits

IMAGE_METHODS = [name for name, cls in methods.available().items() if cls.data_kind != "sequence"]


def images(count: int, side: int, channels: int = 3, classes: int = 10, labelled: int | None = None) -> ArrayDataset:
    """``count`` images without the memory: one image broadcast (the recipe reads sizes, not pixels); the first
    ``labelled`` of them labelled (default: all), the rest -1 (unlabelled)."""
    data = torch.zeros(1, channels, side, side, dtype=torch.uint8).expand(count, -1, -1, -1)
    labels = torch.arange(count) % classes
    labels[count if labelled is None else labelled:] = -1
    return ArrayDataset(data, labels, [str(c) for c in range(classes)], "synthetic", mean=(0.5,) * channels,
                        std=(0.25,) * channels)


# The papers' datasets by size: images, side, classes, labelled images (STL-10 pretrains on its 5,000 labelled
# training images and 100,000 unlabelled ones; 96 px takes the presets' ImageNet section, as ``scale_of`` says).
SCALES = {"cifar10": (50_000, 32, 10, None), "cifar100": (50_000, 32, 100, None), "stl10": (105_000, 96, 10, 5000),
          "imagenet": (1_281_167, 224, 1000, None)}
# What STL-10 still fits of the ImageNet section, made for 1.28M images at 224 px, for methods whose papers never ran
# on STL-10: a 65,536-key memory is 62 % of its 105,000 images, past the rule's quarter (reshuffled each epoch, about
# 0.62^2 / 2, a fifth, of the queries would meet their own key of the epoch before), and 64 px CPC patches every
# 32 px leave a 96 px image 2 rows, 1 below the first, where CPC predicts 5.
STL10_FITTED = {"moco": {"head.queue_size"}, "mocov1": {"head.queue_size"},
                "adco": {"head.num_negatives", "head.negatives_lr"}, "cpc": {"head.patch_size", "head.patch_stride"}}


@lru_cache(maxsize=len(SCALES))
def papers_data(scale: str) -> ArrayDataset:
    count, side, classes, labelled = SCALES[scale]
    return images(count, side, classes=classes, labelled=labelled)


@pytest.mark.parametrize("scale", SCALES)
@pytest.mark.parametrize("method", IMAGE_METHODS)
def test_at_the_papers_scale_nothing_changes(method, scale):
    """Each dataset's size, classes and side for the preset's own epochs and batch: every preset number stays (kNN's
    k = 200 too, which a class of 500 or 1,281 images holds; MoCo v3's 40 warm-up epochs of 300, CPC's 64 px patches
    every 32 at 224 px), but for what STL-10 fits of the ImageNet section (``STL10_FITTED``)."""
    data = papers_data(scale)
    preset = build_config(method, methods.preset(method), scale_of("image", data.input_size))
    fitted = make_config(method, scale, data)
    allowed = STL10_FITTED.get(method, set()) if scale == "stl10" else set()
    assert set(fitted["recipe"]["changes"]) == allowed, fitted["recipe"]["changes"]
    assert without(fitted, allowed) == without(preset, allowed)


def without(cfg: dict, keys: set[str]) -> dict:
    """``cfg`` but its ``recipe`` and ``data`` sections (the run's, not the preset's) and the dotted ``keys``."""
    out = copy.deepcopy({k: v for k, v in cfg.items() if k not in ("recipe", "data")})
    for key in keys:
        section, leaf = key.split(".")
        out[section].pop(leaf, None)
    return out


# What the recipe fits on the digits for 20 epochs at width 16 (tests/test_learning.py's runs depend on it), as the
# code before the papers'-scale fixes (issue 20) fitted it: those fixes change nothing at this size.
DIGITS_COMMON = {"backbone.name": "convnet", "backbone.stem": None, "eval.knn_k": 19, "views.preset": "grayscale"}
LARS_SHORT = {"optim.lars_clip": False, "optim.warmup_epochs": 2}
DIGITS_FITTED = {
    "adco": {"head.negatives_lr": 0.0938, "head.num_negatives": 256, "train.batch_size": 256},
    "barlow_twins": LARS_SHORT,
    "byol": {**LARS_SHORT, "head.momentum_base": 0.9},
    "cpc": {"head.patch_size": 4, "head.patch_stride": 2, "head.prediction_steps": 2, "optim.lr": 0.001},
    "deepclusterv2": {**LARS_SHORT, "head.num_prototypes": [78, 78, 78]},
    "dim": {"optim.lr": 0.001},
    "instdisc": {"head.noise_samples": 0, "views.flip_p": None},
    "moco": {"head.queue_size": 256, "train.batch_size": 256},
    "mocov1": {"head.queue_size": 256, "train.batch_size": 256},
    "mocov3": {**LARS_SHORT, "head.momentum_base": 0.9},
    "simclr": {"optim.lars_eta": 0.02, "optim.warmup_epochs": 2, "train.batch_size": 256},
    "simsiam": {"train.batch_size": 256},
    "supcon": {"optim.warmup_epochs": 2, "train.batch_size": 256},
    "swav": {**LARS_SHORT, "head.freeze_prototypes_epochs": 1, "head.num_prototypes": 78, "head.queue_size": 0},
    "vicreg": {**LARS_SHORT, "views.scale": None, "views.solarize_p": None},
    "wmse": {"optim.warmup_epochs": 2, "train.batch_size": 256, "views.gray_p": None},
}


@pytest.mark.parametrize("method", IMAGE_METHODS)
def test_the_digits_runs_are_fitted_as_before(method):
    cfg = make_config(method, "digits", digits().pretrain, assignments=["train.epochs=20", "backbone.width=16"])
    assert {k: c["value"] for k, c in cfg["recipe"]["changes"].items()} == {**DIGITS_COMMON, **DIGITS_FITTED[method]}
    assert cfg["recipe"]["run"]["steps"] == {"dim": 380, "instdisc": 180}.get(method, 80)


@pytest.mark.parametrize("method,assignments,key,kept", [
    ("adco", ["head.num_negatives=8192"], "negatives_lr", 3.0),  # the lr is for the number of negatives set
    ("swav", ["head.num_prototypes=3000"], "queue_size", 3840),  # 3000 prototypes outnumber a batch of 256
    ("wmse", ["views.preset=mocov2_cifar"], "gray_p", 0.1),  # W-MSE's own setting of the views it names
    ("vicreg", ["views.preset=byol_cifar"], "solarize_p", 0.1),
    ("moco", ["backbone.name=resnet18"], "stem", "cifar"),  # the ResNet set by hand keeps its stem
], ids=["adco-negatives", "swav-prototypes", "wmse-views", "vicreg-views", "moco-backbone"])
def test_a_value_derived_from_a_key_the_user_set_is_kept(method, assignments, key, kept):
    cfg = make_config(method, "digits", digits().pretrain, assignments=["train.epochs=20"] + assignments)
    section = "backbone" if key == "stem" else "views" if key in ("gray_p", "solarize_p") else "head"
    assert cfg[section][key] == kept and f"{section}.{key}" not in cfg["recipe"]["changes"]
    records = cfg["recipe"]["kept"]  # config.yaml says which set key stopped which rule
    assert records and {r["because_set"] for r in records.values()} == {a.split("=")[0] for a in assignments}
    if f"{section}.{key}" in records:  # (SwAV's queue rule does not fire at 3000 prototypes: nothing to stop)
        assert records[f"{section}.{key}"]["value"] == kept != records[f"{section}.{key}"]["not_fitted_to"]


def test_a_shorter_run_keeps_the_presets_own_warmup_fraction():
    """MoCo v3's ViT warms up for 40 of its 300 ImageNet epochs (13 %, more than the 10 % cap): 4 of 30 epochs."""
    cfg = make_config("mocov3", "imagenet", papers_data("imagenet"), assignments=["train.epochs=30"])
    assert cfg["optim"]["warmup_epochs"] == 4 and cfg["recipe"]["changes"]["optim.warmup_epochs"]["preset"] == 40


def test_a_short_run_on_digits_is_fitted_and_says_why():
    cfg = make_config("byol", "digits", digits().pretrain, assignments=["train.epochs=20"])
    changes = cfg["recipe"]["changes"]
    assert cfg["recipe"]["run"] == {"images": 1257, "epochs": 20, "steps": 80, "image_side": 8}
    assert cfg["backbone"]["name"] == "convnet" and "stem" not in cfg["backbone"]
    assert cfg["optim"]["warmup_epochs"] == 2 and changes["optim.warmup_epochs"]["preset"] == 10
    assert cfg["head"]["momentum_base"] == pytest.approx(0.9)  # time constant 10 steps = 1/8 of 80
    assert cfg["optim"]["lars_clip"] is False and cfg["optim"]["lars_eta"] == 0.02
    assert cfg["views"] == {"preset": "grayscale"}
    assert cfg["eval"]["knn_k"] == 19  # 15 % of 126 images per class
    assert all(isinstance(c["why"], str) and c["why"] for c in changes.values())
    assert "backbone.name=convnet" in describe(cfg) and "eval.knn_k=19" in describe(cfg)
    assert describe(build_config("byol", methods.preset("byol"), "cifar")) is None


def test_a_short_adam_run_gets_a_learning_rate_that_moves_its_weights():
    """DIM's 1e-4 over 20 epochs of digits (batch 64: 19 steps an epoch, cosine) sums to 0.019: raised to Adam's
    default; over 200 epochs to 0.19: raised 5.3 times, to where the sum is 1.
    W-MSE's 3e-3 already sums to more than 1 in 80 steps: left alone; so is DIM over 50 CIFAR epochs."""
    dim = make_config("dim", "digits", digits().pretrain, assignments=["train.epochs=20"])
    assert dim["optim"]["lr"] == 1e-3 and dim["recipe"]["changes"]["optim.lr"]["preset"] == 1e-4
    assert "moves at most 0.019 in 380 steps" in dim["recipe"]["changes"]["optim.lr"]["why"]
    longer = make_config("dim", "digits", digits().pretrain, assignments=["train.epochs=200"])
    assert longer["optim"]["lr"] == pytest.approx(1e-4 / 0.19, rel=1e-2)
    wmse = make_config("wmse", "digits", digits().pretrain, assignments=["train.epochs=20"])
    assert wmse["optim"]["lr"] == 3e-3 and "optim.lr" not in wmse["recipe"]["changes"]
    assert make_config("dim", "cifar", images(50_000, 32), assignments=["train.epochs=50"])["optim"]["lr"] == 1e-4
    assert make_config("dim", "digits", digits().pretrain, assignments=["train.epochs=20", "optim.lr=1e-4"])["optim"]["lr"] == 1e-4


def test_what_the_user_set_is_never_touched():
    settings = ["train.epochs=20", "optim.warmup_epochs=5", "eval.knn_k=200", "views.preset=grayscale",
                "head.queue_size=1024"]
    cfg = make_config("moco", "digits", digits().pretrain, assignments=settings, overrides={"backbone": {"name": "resnet18"}})
    assert cfg["optim"]["warmup_epochs"] == 5 and cfg["eval"]["knn_k"] == 200 and cfg["head"]["queue_size"] == 1024
    assert cfg["backbone"]["name"] == "resnet18"
    assert not {"optim.warmup_epochs", "eval.knn_k", "head.queue_size", "backbone.name"} & set(cfg["recipe"]["changes"])
    verbatim = make_config("moco", "digits", digits().pretrain, assignments=["recipe.fit=false", "views.preset=grayscale"])
    assert verbatim["recipe"] == {"fit": False} and verbatim["head"]["queue_size"] == 4096


def test_the_batch_halves_to_four_steps_an_epoch_but_not_below_two():
    assert make_config("simclr", "tiny", images(1000, 8))["train"]["batch_size"] == 128
    assert make_config("supcon", "tiny", images(6, 8), assignments=["train.batch_size=6144"])["train"]["batch_size"] == 6144
    assert make_config("supcon", "tiny", images(6, 8))["train"]["batch_size"] == 2  # 1024 -> ... -> 2
    with pytest.raises(ValueError, match="batch norm needs at least 2"):
        validate(make_config("simclr", "tiny", images(6, 8), assignments=["train.batch_size=1"]), images(6, 8), 1)


def test_explicit_keys_come_from_overrides_and_assignments():
    keys = explicit_keys({"train": {"epochs": 3}, "backbone": {}}, ["loss.temperature=0.2", "head.x=1"])
    assert keys == {"train.epochs", "loss.temperature", "head.x"}


def test_memories_prototypes_and_patches_shrink_with_the_data():
    data = digits().pretrain
    moco = make_config("moco", "digits", data, assignments=["train.epochs=20"])
    assert moco["head"]["queue_size"] == 256 and moco["head"]["momentum"] == 0.99  # the key encoder stays slow
    assert moco["head"]["bn_splits"] == 8  # 32 samples per group at batch 256
    small = make_config("moco", "digits", data, assignments=["train.batch_size=96"])
    assert small["head"]["bn_splits"] == 3 and small["head"]["queue_size"] == 288  # 32 per group; 3 batches
    swav = make_config("swav", "digits", data, assignments=["train.epochs=20"])
    assert swav["head"]["num_prototypes"] == 1257 // 16 and swav["head"]["queue_size"] == 0
    assert make_config("deepclusterv2", "digits", data)["head"]["num_prototypes"] == [78, 78, 78]
    instdisc = make_config("instdisc", "digits", data)
    assert instdisc["head"]["noise_samples"] == 0 and "exact softmax" in instdisc["recipe"]["changes"]["head.noise_samples"]["why"]
    cpc = make_config("cpc", "digits", data)["head"]
    assert (cpc["patch_size"], cpc["patch_stride"], cpc["prediction_steps"]) == (4, 2, 2)


def test_a_grayscale_folder_loads_as_one_channel_and_trains_with_the_small_recipe(tmp_path):
    archive = tmp_path / "glyphs.tar.gz"
    rng = np.random.default_rng(0)
    with tarfile.open(archive, "w:gz") as tar:
        for split, count in (("train", 40), ("test", 20)):
            for i in range(count):
                buffer = io.BytesIO()
                Image.fromarray(rng.integers(0, 256, (28, 28), dtype=np.uint8), mode="L").save(buffer, "PNG")
                info = tarfile.TarInfo(f"{split}/{i % 2}/{i}.png")
                info.size = buffer.tell()
                tar.addfile(info, io.BytesIO(buffer.getvalue()))
    spec = f"folder:{archive}"
    assert load_dataset(spec, None, "test", progress=False).data.shape == (20, 1, 28, 28)
    fit("simclr", spec, out_dir=tmp_path / "run", assignments=QUIET + ["train.epochs=1", "backbone.width=2"])
    cfg = yaml.safe_load((tmp_path / "run" / "config.yaml").read_text())
    assert cfg["backbone"]["name"] == "convnet" and cfg["views"]["preset"] == "grayscale"
    assert cfg["train"]["batch_size"] == 8  # 40 images: 5 steps an epoch
    assert scale_of("image", 28) == "cifar"


def test_a_resumed_run_keeps_its_fitted_config(tmp_path):
    settings = QUIET + ["train.epochs=2", "backbone.width=2", "train.batch_size=128"]
    fit("byol", "digits", out_dir=tmp_path / "run", assignments=settings, datasets=digits(), stop_after_epoch=1)
    written = (tmp_path / "run" / "config.yaml").read_text()
    fit(out_dir=tmp_path / "run", resume=True, datasets=digits())
    assert (tmp_path / "run" / "config.yaml").read_text() == written
    assert yaml.safe_load(written)["head"]["momentum_base"] < 0.99


def test_unlabelled_data_leaves_knn_alone():
    cfg = make_config("simclr", "folder:x", images(200, 32, labelled=0))
    assert "eval.knn_k" not in cfg["recipe"]["changes"]
    assert "eval.knn_k" in make_config("simclr", "folder:x", images(200, 32))["recipe"]["changes"]

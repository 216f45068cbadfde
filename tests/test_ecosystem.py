"""Evaluation protocols (fine-tuning on a labelled fraction, transfer), TensorBoard, library backbones, rerun
from config.yaml, compare and export, on digits and on a folder of small crops of scikit-learn's photographs.

One short digits run (width 4, 2 epochs) is shared by the module's tests; they run on one xdist worker.
"""

from __future__ import annotations

import json
import math
import sys
import types

import numpy as np
import pytest
import torch
import torch.nn.functional as F
import yaml
from PIL import Image
from torch import nn

from selfsup.commands import export as export_module
from selfsup.commands.compare import compare
from selfsup.commands.evaluation import evaluate_run, load_run
from selfsup.commands.finetuning import augmentation
from selfsup.evaluate.finetune import balanced_subset, finetune_top1, paper_steps, simclr_recipe
from selfsup.nn.backbones import build_backbone
from selfsup.run.epoch_record import TIMING_KEYS
from selfsup.run.run_folder import read_config
from selfsup.train.prepare import rerun_config
from selfsup.train.trainer import fit
from tests.helpers import DIGITS_SMALL, digits

TINY = DIGITS_SMALL + ["backbone.width=4", "train.epochs=2", "eval.every=1", "eval.linear_epochs=5"]


@pytest.fixture(scope="session")
def run(tmp_path_factory):
    """A finished 2-epoch SimCLR run on digits, kNN evaluated every epoch, TensorBoard on."""
    out = tmp_path_factory.mktemp("ecosystem") / "run"
    fit("simclr", "digits", out_dir=out, assignments=TINY + ["train.tensorboard=true"], datasets=digits())
    return out


@pytest.fixture(scope="session")
def photo_crops(tmp_path_factory):
    """A CIFAR-like folder: 16 px crops of scikit-learn's two photographs (class = photograph), 40 of each.

    ``gray=True`` gives one-channel copies (a transfer target for the digits encoder)."""
    from sklearn.datasets import load_sample_images

    root = tmp_path_factory.mktemp("photos")
    cache = root / "cache"
    generator = torch.Generator().manual_seed(0)
    for photo, name in zip(load_sample_images().images, ("china", "flower")):
        image = torch.tensor(photo).permute(2, 0, 1).unsqueeze(0).float()
        small = F.interpolate(image, scale_factor=1 / 6, mode="bilinear", antialias=True).round().clamp(0, 255)
        _, _, height, width = small.shape
        for i in range(40):
            y = int(torch.randint(0, height - 16 + 1, (1,), generator=generator))
            x = int(torch.randint(0, width - 16 + 1, (1,), generator=generator))
            crop = small[0, :, y : y + 16, x : x + 16].permute(1, 2, 0).to(torch.uint8).numpy()
            for kind, picture in (("rgb", Image.fromarray(crop)), ("gray", Image.fromarray(crop).convert("L"))):
                (root / kind / name).mkdir(parents=True, exist_ok=True)
                picture.save(root / kind / name / f"{i:02d}.png")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("SELFSUP_CACHE", str(cache))
        yield root


# ---- 4. rerun from config.yaml --------------------------------------------------------------------------


def test_a_rerun_from_config_yaml_repeats_the_run_exactly(run, tmp_path):
    summary = fit(config=run / "config.yaml", out_dir=tmp_path / "again", datasets=digits())
    assert (tmp_path / "again" / "config.yaml").read_bytes() == (run / "config.yaml").read_bytes()

    def rows(folder):
        return [{k: v for k, v in json.loads(line).items() if k not in TIMING_KEYS}
                for line in (folder / "metrics.jsonl").read_text().splitlines()]

    assert rows(tmp_path / "again") == rows(run) and len(rows(run)) == 2
    assert summary["knn_top1"] == json.loads((run / "summary.json").read_text())["knn_top1"]


def test_a_rerun_changes_only_what_is_set_and_never_refits_the_recipe():
    saved = yaml.safe_load(
        "config_version: 1\nmethod: simclr\ndata: {spec: digits, dir: null}\nbackbone: {name: convnet, width: 4}\n"
        "train: {epochs: 20, batch_size: 1024}\noptim: {warmup_epochs: 10}\nrecipe: {fit: true, changes: {}}\n"
    )
    cfg = rerun_config(saved, assignments=["train.epochs=2"])
    # a fresh run of 2 epochs over 1,257 digits would get batch 256 and 0.2 warm-up epochs from the recipe
    assert cfg["train"] == {"epochs": 2, "batch_size": 1024} and cfg["optim"]["warmup_epochs"] == 10
    assert cfg["recipe"] == saved["recipe"]


# ---- 2. TensorBoard --------------------------------------------------------------------------------------


def test_tensorboard_holds_every_step_every_epoch_and_the_test_embeddings(run):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(run / "tensorboard"))
    events.Reload()
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    steps = records[-1]["step"]
    scalars = lambda tag: [(e.step, e.value) for e in events.Scalars(tag)]  # noqa: E731
    assert [s for s, _ in scalars("step/loss")] == list(range(1, steps + 1))
    assert [s for s, _ in scalars("step/lr")] == list(range(1, steps + 1))
    assert len(scalars("step/probe_top1")) == steps and scalars("step/images_per_s")
    first_epoch = [v for s, v in scalars("step/loss") if s <= records[0]["step"]]
    assert np.mean(first_epoch) == pytest.approx(records[0]["loss"], rel=1e-5)  # the row is the steps' mean
    for key in ("loss", "lr", "images_per_s", "probe_top1", "knn_top1", "z_std_ratio", "effective_rank",
                "alignment", "uniformity"):
        assert scalars(f"epoch/{key}") == [(r["step"], pytest.approx(r[key], rel=1e-6)) for r in records], key

    projector = (run / "tensorboard" / "projector_config.pbtxt").read_text()
    folder = run / "tensorboard" / f"{steps:05d}" / "test_embeddings"
    assert f'tensor_path: "{steps:05d}/test_embeddings/tensors.tsv"' in projector and "sprite" in projector
    test = digits().test
    vectors = np.loadtxt(folder / "tensors.tsv", delimiter="\t")
    assert vectors.shape == (len(test), load_run(run)[1].out_dim)
    assert (folder / "metadata.tsv").read_text().split() == [test.classes[y] for y in test.labels.tolist()]
    side = math.ceil(math.sqrt(len(test))) * test.input_size
    assert Image.open(folder / "sprite.png").size == (side, side)


def test_tensorboard_asked_for_but_missing_is_one_line(monkeypatch, tmp_path):
    monkeypatch.setitem(sys.modules, "tensorboard", None)  # as if not installed
    with pytest.raises(ValueError, match="train.tensorboard=true needs the tensorboard package: pip install"):
        fit("simclr", "digits", out_dir=tmp_path / "r", assignments=TINY + ["train.tensorboard=true"],
            datasets=digits())
    assert not (tmp_path / "r").exists()


# ---- 1. evaluation protocols -----------------------------------------------------------------------------


def test_the_labelled_subset_is_class_balanced_fixed_and_checked():
    labels = torch.arange(10).repeat_interleave(torch.tensor([30, 31, 32, 33, 34, 35, 36, 37, 38, 3]))
    subset = balanced_subset(labels, 25, 10, seed=0)
    counts = torch.bincount(labels[subset], minlength=10)
    assert len(subset) == 25 and set(counts.tolist()) == {2, 3} and int((counts == 3).sum()) == 5
    assert torch.equal(subset, balanced_subset(labels, 25, 10, seed=0))
    assert not torch.equal(subset, balanced_subset(labels, 25, 10, seed=1))
    with pytest.raises(ValueError, match="class 9 has 3 training images, fewer than the 4"):
        balanced_subset(labels, 40, 10)
    with pytest.raises(ValueError, match="fewer than one per class"):
        balanced_subset(labels, 9, 10)


def test_the_recipe_is_simclrs_at_imagenet_scale_and_adapted_below():
    for fraction, epochs in ((0.01, 60), (0.10, 30)):
        labelled = math.floor(fraction * 1_281_167)
        recipe = simclr_recipe(labelled, fraction)
        assert (recipe.batch_size, recipe.lr, recipe.momentum, recipe.nesterov, recipe.weight_decay) == (
            4096, 0.8, 0.9, True, 0.0)  # Appendix B.5: 0.05 x 4096 / 256, no regularisation
        assert recipe.steps == labelled * epochs // 4096 + 1 == paper_steps(fraction) and not recipe.changes
    small = simclr_recipe(12, 12 / 1257)
    assert small.batch_size == 12 and small.lr == pytest.approx(0.05 * 12 / 256)
    assert small.steps == paper_steps(12 / 1257) > 12 * 60 // 12 + 1 and set(small.changes) == {"batch_size", "steps"}


def test_finetuning_on_one_percent_of_digits_uses_the_pretraining(run):
    result = evaluate_run(run, "finetune", labels="1%")
    record = json.loads(open(result["finetune_subset"]).read())
    train = digits().train
    assert record["labelled_images"] == len(record["indices"]) == math.floor(0.01 * len(train)) == 12
    chosen = train.labels[record["indices"]]
    assert sorted(record["per_class"].values()) == sorted(torch.bincount(chosen, minlength=10).tolist())
    assert set(record["per_class"].values()) <= {1, 2}
    assert record["recipe"]["lr"] == pytest.approx(0.05 * 12 / 256) and record["seed"] == 0
    summary = json.loads((run / "summary.json").read_text())
    assert summary["finetune_top1"]["1%"] == result["finetune_top1"]["1%"] == record["top1"]

    # the same recipe and subset from the random initialisation the run started from: clearly worse
    cfg, encoder, test = load_run(run)
    torch.manual_seed(cfg["train"]["seed"])
    scratch = build_backbone(cfg["backbone"], 1, 8)
    views = augmentation(cfg, train)
    from selfsup.data.views import normalize

    baseline = finetune_top1(
        scratch, scratch.out_dim, 10, train.data[record["indices"]], chosen, test.data, test.labels,
        simclr_recipe(12, 12 / len(train)), lambda b: views(b)[0], lambda b: normalize(b, train.mean, train.std),
    )
    assert record["top1"] > baseline + 0.05, (record["top1"], baseline)
    assert record["top1"] > 0.4


def test_the_finetuning_benchmark_prints_the_run_beside_a_random_init(run, monkeypatch, capsys):
    """benchmarks/finetune.py: one markdown row per label setting, both top-1s from the same recipe and subset."""
    from benchmarks import finetune as benchmark

    monkeypatch.setattr(sys, "argv", ["finetune.py", "--run", str(run), "--labels", "10"])
    benchmark.main()
    row = capsys.readouterr().out.strip().splitlines()[-1].split("|")[1:-1]
    data, labels, images, steps, trained, scratch, difference = (cell.strip() for cell in row[:7])
    assert (data, labels, images, steps) == ("digits", "10", "10", str(paper_steps(10 / 1257)))
    assert float(difference) == pytest.approx(float(trained) - float(scratch), abs=1.5e-3)
    pretrained = json.loads((run / "eval" / "finetune-digits-10.json").read_text())
    baseline = json.loads((run / "eval" / "random-init" / "eval" / "finetune-digits-10.json").read_text())
    assert pretrained["indices"] == baseline["indices"] and pretrained["recipe"] == baseline["recipe"]
    assert float(trained) == pytest.approx(pretrained["top1"], abs=5e-4)


def test_transfer_to_another_dataset_scores_knn_linear_and_finetuning(run, photo_crops):
    spec = f"folder:{photo_crops / 'gray'}"
    result = evaluate_run(run, "all", labels="10", data=spec)
    assert result["data"] == spec and set(result) >= {"knn_top1", "linear_top1", "finetune_top1"}
    assert result["knn_top1"] >= 0.75 and result["linear_top1"] >= 0.75  # two photographs, told apart
    summary = json.loads((run / "summary.json").read_text())
    assert summary["transfer"][spec]["knn_top1"] == result["knn_top1"]
    assert summary["transfer"][spec]["finetune_top1"] == result["finetune_top1"]
    assert json.loads(open(result["finetune_subset"]).read())["per_class"] == {"china": 5, "flower": 5}


# ---- 3. library backbones --------------------------------------------------------------------------------


class _Pooled(nn.Module):
    """A small classifier as timm/torchvision build them: features, global pooling, a final linear layer."""

    def __init__(self, in_chans: int = 3, num_classes: int = 1000, width: int = 6):
        super().__init__()
        self.features = nn.Sequential(nn.Conv2d(in_chans, width, 3, padding=1), nn.BatchNorm2d(width), nn.ReLU())
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.num_features = width
        self.fc = nn.Linear(width, num_classes) if num_classes else nn.Identity()

    def forward(self, x):
        return self.fc(self.pool(self.features(x)).flatten(1))


@pytest.fixture
def fake_libraries(monkeypatch):
    """Stand-ins for timm and torchvision (neither may be imported here) that record how they were called."""
    calls = []
    timm = types.ModuleType("timm")
    timm.is_model = lambda name: name in ("tiny_net", "resnet50")
    timm.list_models = lambda *a, **k: ["resnet50", "tiny_net"]

    def create_model(name, pretrained=False, num_classes=1000, in_chans=3):
        calls.append(("timm", name, pretrained, num_classes, in_chans))
        return _Pooled(in_chans, num_classes)

    timm.create_model = create_model
    torchvision = types.ModuleType("torchvision")
    models = types.ModuleType("torchvision.models")
    models.list_models = lambda: ["resnet18", "tiny_net"]

    def get_model(name, weights=None):
        calls.append(("torchvision", name, weights))
        return _Pooled(3, 1000, width=5)

    models.get_model = get_model
    torchvision.models = models
    monkeypatch.setitem(sys.modules, "timm", timm)
    monkeypatch.setitem(sys.modules, "torchvision", torchvision)
    monkeypatch.setitem(sys.modules, "torchvision.models", models)
    return calls


def test_library_backbones_lose_their_classifier_and_take_out_dim_from_the_model(fake_libraries):
    timm = build_backbone({"name": "timm:tiny_net", "width": 64, "stem": "cifar", "pretrained": True}, 3, 16)
    assert timm.out_dim == 6 and timm(torch.randn(2, 3, 16, 16)).shape == (2, 6)
    tv = build_backbone({"name": "torchvision:tiny_net", "pretrained": True}, 1, 8)
    assert tv.out_dim == 5 and isinstance(tv.model.fc, nn.Identity)
    assert tv(torch.randn(2, 1, 8, 8)).shape == (2, 5)  # one channel fed as three
    assert fake_libraries == [("timm", "tiny_net", True, 0, 3), ("torchvision", "tiny_net", "DEFAULT")]
    with pytest.raises(ValueError, match="unknown backbone 'timm:resnet5'.*did you mean resnet50"):
        build_backbone({"name": "timm:resnet5"}, 3, 16)
    with pytest.raises(ValueError, match="backbone.width is a setting of selfsup's own backbones"):
        build_backbone({"name": "timm:tiny_net", "width": 16}, 3, 16)
    with pytest.raises(ValueError, match="selfsup's own resnet18 has no pretrained weights"):
        build_backbone({"name": "resnet18", "pretrained": True}, 3, 16)


def test_a_missing_library_is_one_line_saying_how_to_install_it(monkeypatch):
    monkeypatch.setitem(sys.modules, "timm", None)
    with pytest.raises(ValueError, match=r"^backbone timm:resnet50 needs the timm package: pip install timm$"):
        build_backbone({"name": "timm:resnet50"}, 3, 32)
    monkeypatch.setitem(sys.modules, "torchvision", None)
    monkeypatch.setitem(sys.modules, "torchvision.models", None)
    with pytest.raises(ValueError, match="needs the torchvision package: pip install torchvision"):
        build_backbone({"name": "torchvision:resnet18"}, 3, 32)


def test_a_timm_backbone_trains_evaluates_and_finetunes_on_small_photographs(fake_libraries, photo_crops, tmp_path):
    out = tmp_path / "timm"
    summary = fit("simclr", f"folder:{photo_crops / 'rgb'}", out_dir=out, overrides={"backbone": {"name": "timm:tiny_net"}},
                  assignments=["train.epochs=1", "train.device=cpu", "train.progress=false", "eval.plots=false",
                               "eval.linear_epochs=5", "train.tensorboard=false"])
    assert read_config(out)["backbone"]["name"] == "timm:tiny_net" and 0 <= summary["knn_top1"] <= 1
    result = evaluate_run(out, "finetune", labels="4")
    assert json.loads(open(result["finetune_subset"]).read())["per_class"] == {"china": 2, "flower": 2}
    print(result)
    assert result["finetune_top1"]["4"] > 0.5


# ---- 5. compare, 6. export -------------------------------------------------------------------------------


def test_compare_prints_one_table_and_draws_the_curves(run, tmp_path):
    table = compare([run, run], tmp_path / "curves.png")
    lines = table.splitlines()
    summary = json.loads((run / "summary.json").read_text())
    assert lines[0].startswith("| run | method | data | backbone | epochs | kNN | linear |")
    assert lines[0].endswith("| wall time | images/s |") and len(lines) == 4
    cells = [c.strip() for c in lines[2].strip("|").split("|")]
    assert cells[1:5] == ["simclr", "digits", "convnet", "2"]
    assert cells[5] == f"{100 * summary['knn_top1']:.1f}" and cells[6] == f"{100 * summary['linear_top1']:.1f}"
    assert Image.open(tmp_path / "curves.png").size[0] > 600


@pytest.mark.parametrize("fmt", ["onnx", "torchscript"])
def test_export_matches_pytorch_on_the_test_split(run, tmp_path, fmt, monkeypatch):
    result = export_module.export(run, fmt, tmp_path / f"encoder.{fmt}")
    assert result["checked_images"] == len(digits().test) and result["max_abs_difference"] <= 1e-4
    assert (tmp_path / f"encoder.{fmt}").stat().st_size > 0
    monkeypatch.setattr(export_module, "TOLERANCE", -1.0)  # an exporter that disagreed would be refused
    with pytest.raises(ValueError, match="differ from PyTorch's"):
        export_module.export(run, fmt, tmp_path / "refused")
    assert list(tmp_path.glob("*refused*")) == []

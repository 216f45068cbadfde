"""``selfsup eval``: a finished run's encoder scored by kNN, linear probe and fine-tuning, on the run's data or
another (transfer); the scores are merged into its ``summary.json``."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from selfsup.config.build import DEFAULTS
from selfsup.config.recipe_rules import knn_k
from selfsup.config.schema import check_config
from selfsup.data import ArrayDataset, load_dataset
from selfsup.data.base import Datasets
from selfsup.data.images import channel_stats
from selfsup.evaluate.scoring import no_labels, score_encoder
from selfsup.nn.backbones import build_backbone
from selfsup.run import custom_encoder
from selfsup.run.console import Console
from selfsup.run.files import refuse_links
from selfsup.run.report import load_encoder as load_weights
from selfsup.run.report import read_weights, write_json
from selfsup.run.run_folder import read_config
from selfsup.train.setup import load_datasets, resolve_device, seed_everything


def load_run(run: str | Path, encoder: nn.Module | None = None) -> tuple[dict[str, Any], nn.Module, ArrayDataset]:
    """The run's config, its trained encoder (from ``encoder.safetensors``) and its data's test split, normalised
    with the statistics of the split the encoder trained on.

    encoder: a module to load the run's weights into (all of them, nothing else), instead of the one config.yaml
    describes. A run trained with a custom encoder (``fit(..., encoder=MODULE)``) needs it unless the run holds
    the encoder's TorchScript program (``run/custom_encoder.py``), which is then loaded; without either, one line
    says how to call this from Python."""
    run = Path(run)
    weights = run / "encoder.safetensors"
    if not (run / "config.yaml").is_file():
        raise FileNotFoundError(f"{run} is not a run folder (no config.yaml): pass the --out of a `selfsup train`")
    cfg = read_config(run)
    check_config(cfg)
    if not weights.is_file():
        raise FileNotFoundError(f"{run} has no encoder.safetensors yet: the run has not finished (resume it with --resume)")
    program = custom_encoder.load_program(run, cfg) if encoder is None and custom_encoder.is_custom(cfg) else None
    probe = load_dataset(cfg["data"]["spec"], cfg["data"]["dir"], "test")
    trained_on = load_dataset(cfg["data"]["spec"], cfg["data"]["dir"], "pretrain")
    probe.mean, probe.std = trained_on.mean, trained_on.std  # the normalisation the encoder was trained with
    if program is not None:
        return cfg, program, probe
    if encoder is not None:
        return cfg, custom_encoder.load_weights(encoder, read_weights(weights), weights), probe
    encoder = build_backbone(cfg["backbone"], probe.channels, probe.input_size)
    return cfg, load_weights(encoder, weights), probe


def load_encoder(run: str | Path, encoder: nn.Module | None = None) -> nn.Module:
    """The run's trained encoder in eval mode; ``encoder.preprocessing`` says what it takes (input shape, channels,
    side or length, and the mean and std of the data it trained on), as ``selfsup export`` writes it.

    encoder: a module to load the run's weights into (``load_run``), e.g. the class a custom-encoder run trained
    when the run holds no TorchScript program of it."""
    _, encoder, test = load_run(run, encoder)
    encoder.preprocessing = test.preprocessing()
    return encoder.eval()


PROTOCOLS = ("knn", "linear", "finetune", "all")
SCORED = {"knn": ["kNN"], "linear": ["linear probe"], "all": ["kNN", "linear probe"]}


def evaluate_run(
    run: str | Path,
    protocol: str = "all",
    labels: str | None = None,
    data: str | None = None,
    data_dir: str | None = None,
    seed: int = 0,
    encoder: nn.Module | None = None,
) -> dict[str, Any]:
    """Score the run's encoder; the scores are merged into ``summary.json``.

    protocol: ``knn``, ``linear``, ``finetune`` (the whole encoder and a linear head on a class-balanced
    ``labels`` subset: '1%', '10%' or a number of images; ``commands/finetuning.py``) or ``all`` (kNN, linear,
    and fine-tuning when ``labels`` is given). data: another data SPEC to transfer to (its train split fits,
    its test split scores; images are resized to the run's side), recorded under ``transfer`` in the summary.
    encoder: a module to load the run's weights into (``load_run``), for a custom-encoder run without a program.
    """
    if protocol not in PROTOCOLS:
        raise ValueError(f"unknown protocol '{protocol}'; choose one of: {', '.join(PROTOCOLS)}")
    if protocol == "finetune" and labels is None:
        raise ValueError("--protocol finetune needs --labels: a percentage of the training labels (1%, 10%) or a "
                         "number of labelled images")
    if labels is not None and protocol not in ("finetune", "all"):
        raise ValueError(f"--labels sets the labelled subset of --protocol finetune (or all), not of {protocol}")
    if labels is not None:
        from selfsup.commands.finetuning import parse_labels

        parse_labels(labels)  # one line before anything is loaded
    console = Console()
    with console.phase("loading"):  # silent: a run folder that is none is one line, nothing before it
        cfg, encoder, trained_on = load_run(run, encoder)
        refuse_links(Path(run), Path(run) / "summary.json")  # where the scores go: refused before they are computed
        device = resolve_device(cfg["train"]["device"])
        encoder.to(device)
        train, test, k = evaluation_data(cfg, trained_on, data, data_dir)
    results: dict[str, Any] = {"data": data or cfg["data"]["spec"]}
    if protocol != "finetune" and (why := no_labels(Datasets(train, train, test))):
        print(f"selfsup: {why}", file=sys.stderr)
    if protocol != "finetune":
        with console.phase("scoring", f"scoring the frozen features ({', '.join(SCORED[protocol])})"):
            scores, _, _ = score_encoder(
                encoder, Datasets(train, train, test), {"eval": {**cfg["eval"], "knn_k": k}}, device,
                knn=protocol in ("knn", "all"), linear=protocol in ("linear", "all"),
            )
        results.update(scores)
    if labels is not None:
        from selfsup.commands.finetuning import finetune, labelled_total

        labelled_total(labels, train)  # a subset that cannot be drawn: one line, before the start line
        with console.phase("fine-tuning", f"fine-tuning the whole encoder on {labels} of the labels"):
            outcome = finetune(Path(run), cfg, encoder, train, test, labels, device, seed)
        results["finetune_top1"] = {labels: outcome["top1"]}
        results["finetune_subset"] = outcome["subset"]
    _merge_summary(Path(run), results, transfer=results["data"] != cfg["data"]["spec"])
    return results


def evaluation_data(
    cfg: dict[str, Any], trained_on: ArrayDataset, data: str | None = None, data_dir: str | None = None
) -> tuple[ArrayDataset, ArrayDataset, int]:
    """The train and test splits a run is scored on, and kNN's k: the run's own data, or ``data`` (transfer)
    in the form the run's encoder takes."""
    if data is None or data == cfg["data"]["spec"]:
        datasets = load_datasets(cfg["data"]["spec"], cfg["data"]["dir"], cfg["data"])
        return datasets.train, datasets.test, cfg["eval"]["knn_k"]
    options = {"image_size": trained_on.input_size, "on_error": cfg["data"].get("on_error", "stop")}
    train, test = (_matching(load_dataset(data, data_dir, split, **options), trained_on, data, cfg)
                   for split in ("train", "test"))
    test.mean, test.std = train.mean, train.std  # the evaluation's training split normalises both
    return train, test, transfer_k(train)


def transfer_k(train: ArrayDataset) -> int:
    """kNN's k on another dataset: InstDisc's 200, cut as the recipe cuts it for small classes (``recipe_rules.knn_k``)."""
    per_class = int((train.labels >= 0).sum()) / max(train.num_classes, 1)
    return knn_k(DEFAULTS["eval"]["knn_k"], per_class)


def _matching(dataset: ArrayDataset, trained_on: ArrayDataset, spec: str, cfg: dict[str, Any]) -> ArrayDataset:
    """``dataset`` in the form the run's encoder takes: same kind (one line if not), its channels (colour images
    to luminance for a one-channel encoder, gray repeated for a colour one), same side."""
    if dataset.kind != trained_on.kind:
        raise ValueError(f"'{spec}' holds {dataset.kind}s but the run's encoder was trained on {trained_on.kind}s "
                         f"('{cfg['data']['spec']}'): transfer to data of that kind")
    if dataset.channels != trained_on.channels:
        _convert_channels(dataset, trained_on.channels, spec, cfg)
    side = trained_on.input_size
    if dataset.kind == "image" and dataset.input_size != side and isinstance(dataset.data, torch.Tensor):
        print(f"selfsup: '{spec}' images resized from {dataset.input_size} to the run's {side} px", file=sys.stderr)
        resized = F.interpolate(dataset.data.float(), size=(side, side), mode="bilinear", antialias=True)
        dataset.data = resized.round().clamp(0, 255).to(torch.uint8)
    return dataset


LUMINANCE = (0.299, 0.587, 0.114)  # ITU-R 601, as Pillow's convert("L")


def _convert_channels(dataset: ArrayDataset, channels: int, spec: str, cfg: dict[str, Any]) -> None:
    """Colour images to their luminance, or gray images repeated over three channels, with their statistics
    recomputed; other conversions are refused in one line."""
    convertible = {(3, 1), (1, 3)}
    if dataset.kind != "image" or (dataset.channels, channels) not in convertible or not isinstance(
            dataset.data, torch.Tensor):
        raise ValueError(
            f"'{spec}' holds {dataset.channels}-channel {dataset.kind}s but the run's encoder was trained on "
            f"{channels}-channel ones ('{cfg['data']['spec']}'): only images in memory convert between colour and "
            "gray; transfer to data of that kind"
        )
    if channels == 1:
        weights = torch.tensor(LUMINANCE).view(1, 3, 1, 1)
        dataset.data = (dataset.data.float() * weights).sum(1, keepdim=True).round().clamp(0, 255).to(torch.uint8)
        how = "to their luminance"
    else:
        dataset.data = dataset.data.expand(-1, 3, -1, -1).contiguous()
        how = "repeated over 3 channels"
    mean, std = channel_stats(dataset.data.numpy())
    dataset.mean, dataset.std = tuple(mean), tuple(std)
    print(f"selfsup: '{spec}' images converted {how} for the run's {channels}-channel encoder", file=sys.stderr)


def _merge_summary(run: Path, results: dict[str, Any], transfer: bool) -> None:
    """Merge scores into ``summary.json``: fine-tuning results by label setting, other data under ``transfer``."""
    path = run / "summary.json"
    summary = json.loads(path.read_text()) if path.is_file() else {}
    target = summary.setdefault("transfer", {}).setdefault(results["data"], {}) if transfer else summary
    for key, value in results.items():
        if key in ("data", "finetune_subset"):
            continue
        if isinstance(value, dict):
            target[key] = {**target.get(key, {}), **value}
        else:
            target[key] = value
    write_json(path, summary)


def random_init_knn(cfg: dict[str, Any], datasets, device: torch.device) -> float:
    """kNN of the encoder a run with ``cfg`` starts from (same seed, same construction order)."""
    seed_everything(cfg["train"]["seed"])
    encoder = build_backbone(cfg["backbone"], datasets.train.channels, datasets.train.input_size).to(device)
    return score_encoder(encoder, datasets, cfg, device)[0]["knn_top1"]

"""The training loop: sharded batches indexed on the device, views, method step, schedules,
epoch metrics, evaluation, atomic checkpoints, and the run folder of DESIGN.md."""

from __future__ import annotations

import json
import math
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

import torch
from torch import nn
from tqdm import tqdm

from selfsup import distributed
from selfsup.data import iterate_batches
from selfsup.data.views import build_views
from selfsup.evaluate.monitors import collapse_monitors
from selfsup.nn.sync_bn import convert_to_global_batchnorm
from selfsup.train import report
from selfsup.train.checkpoint import load_checkpoint, save_checkpoint
from selfsup.train.config import data_options, dump
from selfsup.train.evaluation import score_encoder
from selfsup.train.optim import build_optimizer
from selfsup.train.schedule import apply_lr, warmup_cosine
from selfsup.train.setup import (
    Datasets,
    build_method,
    load_datasets,
    make_config,
    resolve_device,
    seed_everything,
    validate,
)


def fit(
    method: str | None = None,
    data: str | None = None,
    out_dir: str | Path = "runs/latest",
    data_dir: str | None = None,
    overrides: dict[str, Any] | None = None,
    assignments: list[str] | None = None,
    encoder: nn.Module | None = None,
    resume: bool = False,
    stop_after_epoch: int | None = None,
    datasets: Datasets | None = None,
) -> dict[str, Any]:
    """Train ``method`` on ``data`` and write the run folder; returns the summary.

    resume: continue the run in ``out_dir`` from ``checkpoints/last.pt`` with its saved config.
    stop_after_epoch: return after this many epochs (the schedules still span ``train.epochs``),
    as a job with a time limit would; ``resume`` continues it.
    encoder: any ``nn.Module`` mapping inputs to [B, D], used instead of ``cfg['backbone']``.
    """
    out = Path(out_dir)
    distributed.init_from_env()
    if resume:
        cfg = _read_config(out)
        data_dir = cfg["data"]["dir"]
        datasets = datasets or load_datasets(cfg["data"]["spec"], data_dir, cfg["data"])
    else:
        if method is None or data is None:
            raise ValueError("train needs --method and --data (or --resume with --out pointing at a run)")
        datasets = datasets or load_datasets(data, data_dir, data_options(overrides, assignments))
        cfg = make_config(method, data, datasets.pretrain, data_dir, overrides, assignments)
    return Trainer(cfg, datasets, out, encoder).run(resume, stop_after_epoch)


def _read_config(out: Path) -> dict[str, Any]:
    import yaml

    path = out / "config.yaml"
    if not path.is_file():
        raise FileNotFoundError(f"--resume: no run at {out} (config.yaml missing); start it without --resume")
    return yaml.safe_load(path.read_text())


class Trainer:
    """One run. State that must survive a restart lives in the checkpoint; everything else is rebuilt."""

    def __init__(self, cfg: dict[str, Any], datasets: Datasets, out: Path, encoder: nn.Module | None = None):
        self.cfg, self.datasets, self.out = cfg, datasets, out
        train = cfg["train"]
        self.world = distributed.world_size()
        validate(cfg, datasets.pretrain, self.world)
        self.device = resolve_device(train["device"])
        on_gpu = self.device.type == "cuda"
        if train["precision"] not in ("auto", "bf16", "fp32", "fp64"):
            raise ValueError(f"unknown train.precision '{train['precision']}'; use auto, bf16, fp32 or fp64")
        self.bf16 = train["precision"] == "bf16" or (train["precision"] == "auto" and on_gpu)
        self.dtype = torch.float64 if train["precision"] == "fp64" else torch.float32
        self.channels_last = on_gpu and datasets.pretrain.kind == "image" and train["channels_last"] in ("auto", True)
        self.batch_size = train["batch_size"]
        self.steps_per_epoch = len(datasets.pretrain) // self.batch_size
        self.total_steps = self.steps_per_epoch * train["epochs"]

        seed_everything(train["seed"])
        self.method = build_method(cfg, datasets.pretrain, self.steps_per_epoch, encoder).to(self.device, self.dtype)
        if distributed.is_distributed() and train["sync_batchnorm"]:
            self.method = convert_to_global_batchnorm(self.method, on_gpu)
        if self.channels_last:
            self.method = self.method.to(memory_format=torch.channels_last)
        self.encoder = self.method.encoder
        if train["compile"]:
            self.encoder.compile()
        self.views = build_views(
            cfg["views"], datasets.pretrain.channels, datasets.pretrain.input_size,
            datasets.pretrain.mean, datasets.pretrain.std,
        )
        self.optimizer = build_optimizer(self.method.param_groups(), cfg["optim"], self.batch_size)
        self.model = self._wrap(self.method)
        self.pretrain_data = datasets.pretrain.data.to(self.device) if _fits(datasets.pretrain.data, self.device) else (
            datasets.pretrain.data
        )
        self.pretrain_labels = datasets.pretrain.labels.to(self.device)
        self.epoch, self.step, self.history = 0, 0, []

    def _wrap(self, method: nn.Module) -> nn.Module:
        if not distributed.is_distributed():
            return method
        cuda = self.device.type == "cuda"
        # Buffers are not broadcast each step: global batch norm keeps statistics equal on all ranks,
        # and queues / memory banks are written from gathered batches, identically everywhere.
        return nn.parallel.DistributedDataParallel(
            method, device_ids=[self.device.index] if cuda else None, broadcast_buffers=False,
            find_unused_parameters=self.cfg["train"]["find_unused_parameters"],
        )

    # ---- the loop ----------------------------------------------------------------------------------

    def run(self, resume: bool = False, stop_after_epoch: int | None = None) -> dict[str, Any]:
        if resume:
            self._restore()
        elif distributed.is_main():
            self.out.mkdir(parents=True, exist_ok=True)
            (self.out / "config.yaml").write_text(dump(self.cfg))
            (self.out / "metrics.jsonl").write_text("")
        epochs = self.cfg["train"]["epochs"]
        last = epochs if stop_after_epoch is None else min(epochs, stop_after_epoch)
        while self.epoch < last:
            record = self._train_epoch()
            if self._due(self.cfg["eval"]["every"]):
                record.update(self.evaluate(linear=self._due(self.cfg["eval"]["linear_every"]))[0])
            self._log(record)
            self.epoch += 1
            if self.epoch % self.cfg["train"]["checkpoint_every"] == 0 or self.epoch == epochs:
                self._save()
        if self.epoch < epochs:
            return {"stopped_at_epoch": self.epoch}
        return self._finish()

    def _train_epoch(self) -> dict[str, Any]:
        self.method.train()
        torch.manual_seed(self.cfg["train"]["seed"] * 1_000_003 + self.epoch * 1_009 + distributed.rank())
        self.method.on_epoch_start(self.epoch)
        order = self._epoch_order()
        sums: dict[str, Any] = defaultdict(float)
        monitor_pairs: list[tuple[torch.Tensor, torch.Tensor]] = []
        monitor_from = self.steps_per_epoch - self.cfg["eval"]["monitor_batches"]
        start = time.perf_counter()
        shards = [
            order[i * self.batch_size : (i + 1) * self.batch_size].view(self.world, -1)[distributed.rank()]
            for i in range(self.steps_per_epoch)
        ]
        bar = tqdm(
            zip(shards, iterate_batches(self.pretrain_data, shards, self.device)), total=self.steps_per_epoch,
            desc=f"epoch {self.epoch + 1}/{self.cfg['train']['epochs']}",
            disable=not (self.cfg["train"]["progress"] and distributed.is_main()), leave=False,
        )
        for i, (indices, batch) in enumerate(bar):
            lr = apply_lr(self.optimizer, warmup_cosine(
                self.step, self.total_steps, self.cfg["optim"]["warmup_epochs"] * self.steps_per_epoch,
                self.cfg["optim"]["min_lr_ratio"],
            ))
            out, metrics = self._step(indices, batch)
            for key, value in metrics.items():
                sums[key] = sums[key] + value.to(self.device)
            if i >= monitor_from and out.embeddings is not None:
                monitor_pairs.append(tuple(e.detach().float() for e in out.embeddings))
            if i % 10 == 0 or i == self.steps_per_epoch - 1:
                loss = metrics["loss"].item()
                if not math.isfinite(loss):
                    raise FloatingPointError(f"loss became {loss} at step {self.step}: lower optim.lr or check the data")
                bar.set_postfix(loss=f"{loss:.4f}", lr=f"{lr:.3g}")
        if self.device.type == "cuda":
            torch.cuda.synchronize()
        seconds = time.perf_counter() - start
        record: dict[str, Any] = {"epoch": self.epoch + 1, "step": self.step}
        record.update({k: distributed.all_reduce_mean(v).item() / self.steps_per_epoch for k, v in sums.items()})
        record["lr"] = lr
        record["images_per_s"] = self.steps_per_epoch * self.batch_size / seconds
        record["epoch_s"] = seconds
        if monitor_pairs:
            z1 = distributed.gather_no_grad(torch.cat([p[0] for p in monitor_pairs]))
            z2 = distributed.gather_no_grad(torch.cat([p[1] for p in monitor_pairs]))
            record.update(collapse_monitors(z1, z2))
        return record

    def _epoch_order(self) -> torch.Tensor:
        """A permutation of the pretraining set that depends only on (seed, epoch): identical on every rank."""
        generator = torch.Generator().manual_seed(self.cfg["train"]["seed"] * 1_000_003 + self.epoch)
        return torch.randperm(len(self.datasets.pretrain), generator=generator).to(self.pretrain_labels.device)

    def _step(self, indices: torch.Tensor, batch: torch.Tensor) -> tuple[Any, dict[str, torch.Tensor]]:
        labels = self.pretrain_labels[indices]
        with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.bf16):
            views = [v.to(self.dtype) for v in self.views(batch)]
            if self.channels_last:
                views = [v.contiguous(memory_format=torch.channels_last) for v in views]
            out = self.model(views, labels, indices)
            metrics = {"loss": out.loss.detach(), **out.metrics}
            total, probe_top1 = self.method.training_loss(out, labels)
            if probe_top1 is not None:
                metrics["probe_top1"] = probe_top1
        self.optimizer.zero_grad(set_to_none=True)
        total.backward()
        self.method.on_after_backward(self.step)
        self.optimizer.step()
        self.method.on_step_end(self.step, self.total_steps)
        self.step += 1
        return out, {k: v.detach().float() if torch.is_tensor(v) else torch.tensor(float(v)) for k, v in metrics.items()}

    # ---- evaluation --------------------------------------------------------------------------------

    def _due(self, every: int) -> bool:
        """Every ``every`` epochs and at the last one; never when ``every`` is 0."""
        return bool(every) and ((self.epoch + 1) % every == 0 or self.epoch + 1 == self.cfg["train"]["epochs"])

    def evaluate(self, linear: bool) -> tuple[dict[str, float], torch.Tensor, torch.Tensor]:
        """kNN (and, if asked, linear-probe) top-1 of the current encoder, with the test features and labels."""
        return score_encoder(
            self.encoder, self.datasets, self.cfg, self.device, linear=linear,
            bf16=self.bf16, channels_last=self.channels_last, dtype=self.dtype,
        )

    # ---- run folder ---------------------------------------------------------------------------------

    def _log(self, record: dict[str, Any]) -> None:
        self.history.append(record)
        if distributed.is_main():
            with open(self.out / "metrics.jsonl", "a") as f:
                f.write(json.dumps(record) + "\n")

    def _save(self) -> None:
        if not distributed.is_main():
            return
        state = {
            "epoch": self.epoch,
            "step": self.step,
            "method": self.method.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "history": self.history,
        }
        save_checkpoint(self.out / "checkpoints" / "last.pt", state)

    def _restore(self) -> None:
        state = load_checkpoint(self.out / "checkpoints" / "last.pt")
        self.method.load_state_dict(state["method"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.epoch, self.step, self.history = state["epoch"], state["step"], state["history"]

    def _finish(self) -> dict[str, Any]:
        scores, test_f, test_y = self.evaluate(linear=True)
        summary = {
            "method": self.cfg["method"],
            "data": self.cfg["data"]["spec"],
            "epochs": self.epoch,
            **scores,
            "wall_s": sum(r["epoch_s"] for r in self.history),
            "images_per_s": sum(r["images_per_s"] for r in self.history) / max(len(self.history), 1),
        }
        if distributed.is_main():
            report.write_outputs(self.out, self.encoder, summary, self.history, test_f, test_y, self.cfg["eval"]["plots"])
        distributed.barrier()
        return summary


def _fits(data: Any, device: torch.device) -> bool:
    """Small datasets move to the device once; memory-mapped large ones and streamed files stay on the host."""
    if device.type == "cpu" or not isinstance(data, torch.Tensor):
        return True
    free, _ = torch.cuda.mem_get_info(device)
    return data.numel() * data.element_size() < free // 4

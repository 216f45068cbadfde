"""The training loop: sharded batches indexed on the device, views, method step, schedules, epoch metrics,
evaluation and checkpoints. The run's record (folder, checkpoints, preemption, divergence guard: ``selfsup.run``),
its configuration (schema, recipe: ``selfsup.config``) and the scoring (``selfsup.evaluate``) live below it."""

from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import Any

import torch
from torch import nn

from selfsup import distributed
from selfsup.config import recipe
from selfsup.config.schedule import warmup_cosine
from selfsup.data import iterate_batches
from selfsup.data.views import build_views
from selfsup.evaluate.scoring import score_encoder
from selfsup.nn.sync_bn import convert_to_global_batchnorm
from selfsup.run import custom_encoder, report, run_folder
from selfsup.run.checkpoint import load_checkpoint, restore_rng, rng_state, save_checkpoint
from selfsup.run.console import Console
from selfsup.run.divergence import DivergenceGuard
from selfsup.run.epoch_record import EpochRecord
from selfsup.run.preemption import Preempted, PreemptionWatch
from selfsup.run.resume import check_checkpoint, replan
from selfsup.train.numerics import describe_cpu_autocast, resolve_numerics
from selfsup.train.optim import apply_lr, build_optimizer
from selfsup.train.prepare import prepare
from selfsup.train.setup import Datasets, build_method, resolve_device, seed_everything, validate
from selfsup.train.step import build_step_forward, compile_target


def fit(
    method: str | None = None,
    data: str | None = None,
    out_dir: str | Path | None = None,
    data_dir: str | None = None,
    overrides: dict[str, Any] | None = None,
    assignments: list[str] | None = None,
    encoder: nn.Module | None = None,
    resume: bool = False,
    stop_after_epoch: int | None = None,
    datasets: Datasets | None = None,
    overwrite: bool = False,
    config: str | Path | None = None,
) -> dict[str, Any]:
    """Train ``method`` on ``data`` and write the run folder ``out_dir``; returns the summary.

    The configuration and the folder are checked before anything is written. ``out_dir`` None: a new
    ``runs/METHOD-DATA/version_N``. A folder holding a run is refused unless ``resume`` (continue it from
    ``checkpoints/last.pt`` with its saved config; ``overrides``/``assignments`` may then change only what
    ``resume.RESUMABLE`` lists, e.g. a larger ``train.epochs``) or ``overwrite`` (replace it).
    stop_after_epoch: return after this many epochs (the schedules still span ``train.epochs``).
    encoder: any ``nn.Module`` mapping inputs to [B, D], used instead of ``cfg['backbone']``; config.yaml records its
    class and the run its TorchScript program where one can be made (``run/custom_encoder.py``). Resuming or
    rerunning such a run needs the module again (an instance built as before).
    config: rerun the run whose ``config.yaml`` (or folder) this is, exactly (``prepare.rerun_config``).
    """
    distributed.init_from_env()
    console = Console()
    with console.phase("setup"):
        cfg, datasets, out = prepare(
            method, data, out_dir, data_dir, overrides, assignments, resume, overwrite, datasets, config
        )
    console.enabled = console.enabled and cfg["train"]["progress"]
    if encoder is None and custom_encoder.is_custom(cfg):
        raise ValueError(custom_encoder.refusal(out if resume else config, cfg, "resume" if resume else "rerun"))
    if encoder is not None and not resume:
        custom_encoder.record(cfg, encoder)
    trainer = Trainer(cfg, datasets, encoder, console)
    if not distributed.is_main():
        return trainer.run(None, resume, stop_after_epoch, out)
    with run_folder.RunFolder.claim(out, resume=resume, overwrite=overwrite) as folder:
        if out_dir is None:
            print(f"selfsup: run folder {out}", file=sys.stderr)
        if not resume and config is None and (fitted := recipe.describe(cfg)):
            print(f"selfsup: {fitted}", file=sys.stderr)
        summary = trainer.run(folder, resume, stop_after_epoch, out, overwrite)
    return {**summary, "run": str(out)}


class Trainer:
    """One run. State that must survive a restart lives in the checkpoint; everything else is rebuilt."""

    def __init__(
        self, cfg: dict[str, Any], datasets: Datasets, encoder: nn.Module | None = None, console: Console | None = None
    ):
        self.cfg, self.datasets = cfg, datasets
        self.console = console or Console(enabled=cfg["train"]["progress"])
        train = cfg["train"]
        self.world = distributed.world_size()
        validate(cfg, datasets.pretrain, self.world)
        self.device = resolve_device(train["device"])
        on_gpu = self.device.type == "cuda"
        numerics = resolve_numerics(train, self.device, datasets.pretrain)
        self.bf16, self.dtype, self.channels_last = numerics.bf16, numerics.dtype, numerics.channels_last
        notice = describe_cpu_autocast(numerics, train, self.device)
        if notice is not None:
            self.console.say(notice)
        self.batch_size = train["batch_size"]
        self.steps_per_epoch = len(datasets.pretrain) // self.batch_size
        self.total_steps = self.steps_per_epoch * train["epochs"]
        self.guard = DivergenceGuard(train["on_nan"], self.device)

        seed_everything(train["seed"])
        self.method = build_method(cfg, datasets.pretrain, self.steps_per_epoch, encoder).to(self.device, self.dtype)
        if distributed.is_distributed() and train["sync_batchnorm"]:
            self.method = convert_to_global_batchnorm(self.method, on_gpu)
        if self.channels_last:
            self.method = self.method.to(memory_format=torch.channels_last)
        self.encoder = self.method.encoder
        self.guard.watch(self.method)
        if compile_target(train["compile"]) == "backbone":
            self.encoder.compile()
        self.views = build_views(
            cfg["views"], datasets.pretrain.channels, datasets.pretrain.input_size,
            datasets.pretrain.mean, datasets.pretrain.std,
        )
        self.optimizer = build_optimizer(self.method.param_groups(), cfg["optim"], self.batch_size)
        self.model = self._wrap(self.method)
        self.forward = build_step_forward(
            self.model, self.method, self.views, train, self.dtype, self.bf16, self.channels_last
        )
        self.pretrain_data = datasets.pretrain.data.to(self.device) if _fits(datasets.pretrain.data, self.device) else (
            datasets.pretrain.data
        )
        self.pretrain_labels = datasets.pretrain.labels.to(self.device)
        self.epoch, self.step, self.history = 0, 0, []
        self.partial: dict[str, Any] | None = None  # a mid-epoch checkpoint's epoch state, until resumed
        self.folder: run_folder.RunFolder | None = None
        self.watch = PreemptionWatch()

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

    def run(
        self, folder: run_folder.RunFolder | None, resume: bool = False, stop_after_epoch: int | None = None,
        out: Path | None = None, overwrite: bool = False,
    ) -> dict[str, Any]:
        """Train in ``folder`` (None on ranks other than 0, which write nothing) to the end or ``stop_after_epoch``."""
        self.folder, self.out = folder, out
        self.guard.checkpoint = folder.checkpoint if folder is not None else None
        if resume:
            self._restore(Path(out) / run_folder.CHECKPOINT)
        if folder is not None:
            folder.resume(self.cfg, self.history, self.step) if resume else folder.start(self.cfg, overwrite)
            report.describe_data(folder.path, self.datasets)
        epochs = self.cfg["train"]["epochs"]
        last = epochs if stop_after_epoch is None else min(epochs, stop_after_epoch)
        with self.watch:
            with self.console.phase("training"):
                self._train(epochs, last)
            if self.epoch < epochs:
                return {"stopped_at_epoch": self.epoch}
            return self._finish()

    def _train(self, epochs: int, last: int) -> None:
        """Epochs up to ``last``, each logged, scored when due, and checkpointed; one bar over all their steps."""
        self.console.start_bar(last * self.steps_per_epoch, self.step)
        try:
            while self.epoch < last:
                record = self._train_epoch()
                if self._due(self.cfg["eval"]["every"]):
                    record.update(self.evaluate(linear=self._due(self.cfg["eval"]["linear_every"]))[0])
                self.history.append(record)
                if self.folder is not None:
                    self.folder.log(record)
                self.console.epoch(record, epochs)
                self.epoch += 1
                if self.epoch % self.cfg["train"]["checkpoint_every"] == 0 or self.epoch == epochs:
                    self._save()
        finally:
            self.console.close_bar()

    def _train_epoch(self) -> dict[str, Any]:
        self.method.train()
        done = self.step - self.epoch * self.steps_per_epoch  # steps of this epoch a mid-epoch checkpoint holds
        if self.partial is None:
            torch.manual_seed(self.cfg["train"]["seed"] * 1_000_003 + self.epoch * 1_009 + distributed.rank())
            self.method.on_epoch_start(self.epoch)
            record = EpochRecord()
        else:  # resumed from a mid-epoch checkpoint
            record = EpochRecord.from_state(self.partial["record"], self.device)
            restore_rng(self.partial["rng"], self.device)
            self.partial = None
        order = self._epoch_order()
        shards = [
            order[i * self.batch_size : (i + 1) * self.batch_size].view(self.world, -1)[distributed.rank()]
            for i in range(done, self.steps_per_epoch)
        ]
        train = self.cfg["train"]
        every_steps = train["checkpoint_every_steps"]
        monitor_from = self.steps_per_epoch - self.cfg["eval"]["monitor_batches"]
        batches = zip(shards, iterate_batches(self.pretrain_data, shards, self.device))
        start = time.perf_counter()
        for i, (indices, batch) in enumerate(batches, start=done):
            record.lr = apply_lr(self.optimizer, warmup_cosine(
                self.step, self.total_steps, self.cfg["optim"]["warmup_epochs"] * self.steps_per_epoch,
                self.cfg["optim"]["min_lr_ratio"],
            ))
            step = self._step(indices, batch)
            if step is None:
                record.skipped += 1
            else:
                record.add(step[1], step[0].embeddings, monitor=i >= monitor_from)
                if self.folder is not None:
                    self.folder.log_step(self.step, step[1], record.lr, self.batch_size)
            if (i % 10 == 0 or i == self.steps_per_epoch - 1) and step is not None:
                self.guard.check()
                self.console.advance(loss=f"{step[1]['loss'].item():.4f}", lr=f"{record.lr:.3g}")
            else:
                self.console.advance()
            signal = self.watch.requested()
            if signal or (every_steps and self.step % every_steps == 0 and i + 1 < self.steps_per_epoch):
                record.seconds += time.perf_counter() - start
                start = time.perf_counter()
                self._save(record)
            if signal:
                raise Preempted(
                    f"stopped by {signal} at epoch {self.epoch + 1}, step {self.step}: checkpoint saved; "
                    f"continue with: selfsup train --resume --out {self.out}"
                )
        if self.device.type == "cuda":
            torch.cuda.synchronize()
        self.guard.check()
        record.seconds += time.perf_counter() - start
        return record.row(
            self.epoch + 1, self.step, self.steps_per_epoch * self.batch_size, count_skipped=train["on_nan"] == "skip"
        )

    def _epoch_order(self) -> torch.Tensor:
        """A permutation of the pretraining set that depends only on (seed, epoch): identical on every rank."""
        generator = torch.Generator().manual_seed(self.cfg["train"]["seed"] * 1_000_003 + self.epoch)
        return torch.randperm(len(self.datasets.pretrain), generator=generator).to(self.pretrain_labels.device)

    def _step(self, indices: torch.Tensor, batch: torch.Tensor) -> tuple[Any, dict[str, torch.Tensor]] | None:
        """One optimizer step; None if the divergence guard skipped it (``train.on_nan=skip``).

        No host read of the device (``tests/test_host_syncs.py``) except the guard's on the CPU or in ``skip`` mode.
        """
        labels = self.pretrain_labels[indices]
        self.guard.before_step()
        out, total, metrics = self.forward(batch, labels, indices)
        if not self.guard.admit(out.loss, self.step):
            self.step += 1
            return None
        self.optimizer.zero_grad(set_to_none=True)
        total.backward()
        self.method.on_after_backward(self.step)
        self.optimizer.step()
        self.method.on_step_end(self.step, self.total_steps)
        self.step += 1
        return out, metrics

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

    # ---- checkpoints ---------------------------------------------------------------------------------

    def _save(self, record: EpochRecord | None = None) -> None:
        """Checkpoint at a step boundary; ``record``: the epoch in progress (a mid-epoch checkpoint)."""
        self.guard.check()  # never save the weights of a step whose loss was not finite
        runtime = self.method.runtime_state()  # on every rank: it may gather
        partial = None if record is None else {  # per rank: their sums, monitors and random streams differ
            "ranks": distributed.gather_objects({"record": record.state(), "rng": rng_state(self.device)})
        }
        if self.folder is None:
            return
        state = {
            "epoch": self.epoch,
            "step": self.step,
            "method": self.method.state_dict(),
            "runtime": runtime,
            "optimizer": self.optimizer.state_dict(),
            "history": self.history,
            "epochs": self.cfg["train"]["epochs"],
            "partial": partial,
        }
        save_checkpoint(self.folder.checkpoint, state)

    def _restore(self, path: Path) -> None:
        """Continue from ``path``; one line if it is not a checkpoint of this run's model and optimizer."""
        state = load_checkpoint(path)
        check_checkpoint(state, self.method.state_dict(), path)
        self.method.load_state_dict(state["method"])
        try:
            self.method.load_runtime_state(state["runtime"])
            self.optimizer.load_state_dict(state["optimizer"])
        except (KeyError, TypeError, ValueError, RuntimeError, IndexError) as error:
            raise ValueError(f"checkpoint {path} does not fit this run's method or optimizer ({error.__class__.__name__}: "
                             f"{' '.join(str(error).split())[:200]}): resume with the run's own checkpoint") from None
        self.epoch, self.step, self.history = state["epoch"], state["step"], state["history"]
        ranks = state["partial"]["ranks"] if state["partial"] else None
        if ranks is not None and len(ranks) != self.world:
            raise ValueError(
                f"{path} was saved mid-epoch by {len(ranks)} processes; resume it with {len(ranks)} (or from an "
                "epoch-end checkpoint with any number)"
            )
        self.partial = ranks[distributed.rank()] if ranks else None
        if state["epochs"] != self.cfg["train"]["epochs"]:
            replan(self.cfg, state["epochs"], self.epoch, self.step, mid_epoch=self.partial is not None)

    def _finish(self) -> dict[str, Any]:
        """Score the encoder and write the run's outputs, still under the preemption watch.

        Everything slow (the evaluation, the figures) comes before the first write. A signal until then stops the
        run for requeue (exit 75): its last checkpoint holds the finished training, and ``--resume`` writes the
        outputs. A signal during the writes, which take a moment, lets them complete: the run is finished (exit 0).
        ``summary.json`` is written last, so a SIGKILL mid-way leaves a run that ``--resume`` finishes.
        """
        with self.console.phase("evaluation", "scoring the trained encoder on the held-out split"):
            scores, test_f, test_y = self.evaluate(linear=True)
        last = self.history[-1] if self.history else {}
        probe = {"probe_top1": last["probe_top1"]} if "probe_top1" in last else {}  # the online probe's last epoch
        summary = {
            "method": self.cfg["method"],
            "data": self.cfg["data"]["spec"],
            "epochs": self.epoch,
            **scores,
            **probe,
            "images_per_s": sum(r["images_per_s"] for r in self.history) / max(len(self.history), 1),
        }
        figures = {}
        if self.folder is not None and self.cfg["eval"]["plots"]:
            with self.console.phase("plots", "drawing the curves and the embedding map"):
                figures = report.render_figures(self.history, test_f, test_y,
                                                f"{summary['method']} on {summary['data']}", self.datasets.test.classes)
        program = None
        if self.folder is not None and custom_encoder.is_custom(self.cfg):
            program = custom_encoder.compile_program(self.encoder, self.datasets.pretrain)
        signal = self.watch.requested()  # on every rank, as in the loop
        if signal:
            raise Preempted(f"stopped by {signal} after training, before writing the encoder and summary: checkpoint "
                            f"saved; continue with: selfsup train --resume --out {self.out}")
        if self.folder is not None:
            self.folder.log_embeddings(test_f, test_y, self.datasets.test, self.step)
        summary.update(wall_s=self.console.wall_s(), phases_s={k: round(v, 3) for k, v in self.console.phases.items()})
        if self.folder is not None:
            report.write_outputs(self.folder.path, self.encoder, figures, summary, program)
            if self.watch.signal:
                print(f"selfsup: note: {self.watch.signal} came while the final outputs were written; they were "
                      "completed, and the run is finished", file=sys.stderr)
        distributed.barrier()
        return summary


def _fits(data: Any, device: torch.device) -> bool:
    """Small datasets move to the device once; memory-mapped large ones and streamed files stay on the host."""
    if device.type == "cpu" or not isinstance(data, torch.Tensor):
        return True
    free, _ = torch.cuda.mem_get_info(device)
    return data.numel() * data.element_size() < free // 4

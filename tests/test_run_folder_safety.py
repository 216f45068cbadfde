"""selfsup deletes and writes only what it made, never through a symbolic link (issue 18).

Every case drives the real command line in its own process (side by side, for time) and checks four things: the
exit status, one line on stderr, no traceback, and every watched file byte for byte as before: the run folder
handed or prepared (``run``) and the files outside it a link points at (``outside``). Hostile folders (links at
every name selfsup writes, a hard-linked lock, a manifest that names a file outside), careless ``--out`` values
(a folder that is not a run, a home folder, a folder inside a run, a run holding foreign files), signals during
the final writes, and a full disk. The positive cases: ``--overwrite`` of a run deletes selfsup's files alone
(and the new files honour the umask), and a run of an earlier selfsup (no manifest) resumes and is replaced.
"""

from __future__ import annotations

import json
import os
import shutil
import stat
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import pytest

from selfsup.run.checkpoint import load_checkpoint
from selfsup.run.files import MANIFEST
from selfsup.run.preemption import REQUEUE_EXIT_CODE
from selfsup.train.trainer import fit
from tests.helpers import digits
from tests.test_bad_inputs import TINY, TRAIN, _run, _snapshot, copy_run

QUICK = ["--set", "backbone.width=4", "--set", "train.epochs=1", "--set", "eval.plots=false", "--set",
         "eval.linear_epochs=1", "--set", "eval.knn_k=20", "--set", "train.tensorboard=false"]
PRECIOUS = b"a file of the user's, outside the run folder\n"
# Python run in the command's own process before ``main``: a signal at a chosen moment, or another umask.
PRELUDE = "import os, signal, sys\n{}\nfrom selfsup.cli import main\nsys.exit(main(sys.argv[1:]))\n"
SIGTERM_IN_FINAL_EVALUATION = """
import selfsup.train.trainer as trainer
scored = trainer.score_encoder
def score_then_term(*args, **kwargs):
    if kwargs.get("linear"):
        os.kill(os.getpid(), signal.SIGTERM)
    return scored(*args, **kwargs)
trainer.score_encoder = score_then_term
"""
SIGTERM_IN_FINAL_WRITES = """
import selfsup.run.report as report
save = report.save_encoder
def term_then_save(*args, **kwargs):
    os.kill(os.getpid(), signal.SIGTERM)
    return save(*args, **kwargs)
report.save_encoder = term_then_save
"""
SIGKILL_BEFORE_SUMMARY = """
import selfsup.run.report as report
def kill(path, payload):
    os.kill(os.getpid(), signal.SIGKILL)
report.write_json = kill
"""
UMASK_027 = "os.umask(0o027)"
NOTES = ("selfsup: fitted to this run", "selfsup: extending the run")


def _outside(case: Path) -> Path:
    """Files of the user's that a hostile run folder's links point at."""
    outside = case / "outside"
    (outside / "folder").mkdir(parents=True)
    (outside / "precious.txt").write_bytes(PRECIOUS)
    (outside / "folder" / "last.pt").write_bytes(PRECIOUS)
    (outside / "summary.json").write_text('{"mine": 1}\n')
    return outside


def _linked(name: str, target: str = "precious.txt", argv: str = "resume") -> Callable[[Path, Path], list[str]]:
    """A handed run whose ``name`` is a symbolic link into ``outside`` (the original moved there first)."""

    def setup(case: Path, finished: Path) -> list[str]:
        run, outside = copy_run(finished, case), _outside(case)
        if (run / name).exists():
            shutil.move(run / name, outside / f"moved-{Path(name).name}")
        (run / name).symlink_to(outside / target)
        if argv == "eval":
            return ["eval", "--run", str(run), "--protocol", "knn"]
        return ["train", "--resume", "--out", str(run)]

    return setup


def _hard_linked_lock(case: Path, finished: Path) -> list[str]:
    run, outside = copy_run(finished, case), _outside(case)
    os.link(outside / "precious.txt", run / ".lock")
    return ["train", "--resume", "--out", str(run)]


def _manifest_naming_outside(case: Path, finished: Path) -> list[str]:
    run = copy_run(finished, case)
    _outside(case)
    manifest = json.loads((run / MANIFEST).read_text())
    manifest["entries"].append("../outside/precious.txt")
    (run / MANIFEST).write_text(json.dumps(manifest))
    return TRAIN + QUICK + ["--out", str(run), "--overwrite"]


def _not_a_run(overwrite: bool) -> Callable[[Path, Path], list[str]]:
    """The issue's repro: a folder with a model of the user's and a script, given as --out."""

    def setup(case: Path, finished: Path) -> list[str]:
        _write(case / "run" / "checkpoints" / "model.pth", b"weights")
        _write(case / "run" / "train.py", b"code")
        return TRAIN + QUICK + ["--out", str(case / "run")] + (["--overwrite"] if overwrite else [])

    return setup


def _home(overwrite: bool) -> Callable[[Path, Path], list[str]]:
    def setup(case: Path, finished: Path) -> list[str]:
        for name in (".ssh/id_rsa", ".bashrc", "Documents/thesis.tex"):
            _write(case / "run" / name, name.encode())
        return TRAIN + QUICK + ["--out", str(case / "run")] + (["--overwrite"] if overwrite else [])

    return setup


def _run_with(*names: str, legacy: bool = False) -> Callable[[Path, Path], list[str]]:
    """A run (``legacy``: of a selfsup before manifests) holding files of the user's too, given to --overwrite."""

    def setup(case: Path, finished: Path) -> list[str]:
        run, outside = copy_run(finished, case), _outside(case)
        if legacy:
            (run / MANIFEST).unlink()
        for name in names:
            if name == "link":
                (run / name).symlink_to(outside / "precious.txt")
            else:
                _write(run / name, b"the user's")
        return TRAIN + QUICK + ["--out", str(run), "--overwrite"]

    return setup


def _inside(below: str) -> Callable[[Path, Path], list[str]]:
    def setup(case: Path, finished: Path) -> list[str]:
        return TRAIN + QUICK + ["--out", str(copy_run(finished, case) / below)]

    return setup


def _foreign_config(case: Path, finished: Path) -> list[str]:
    """Another tool's config.yaml and metrics.jsonl are no run of an earlier selfsup."""
    _write(case / "run" / "config.yaml", b"lr: 0.1\nlayers: 3\n")
    _write(case / "run" / "metrics.jsonl", b'{"loss": 1}\n')
    return TRAIN + QUICK + ["--out", str(case / "run"), "--overwrite"]


def _checkpoint_without_run(case: Path, finished: Path) -> list[str]:
    run = copy_run(finished, case)
    for name in (MANIFEST, "metrics.jsonl"):
        (run / name).unlink()
    return ["train", "--resume", "--out", str(run)]


def _write(path: Path, content: bytes) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(content)
    return path


@dataclass
class Case:
    """argv (from a setup in the case's folder), the start of the one stderr line, and the paths that must not change."""

    setup: Callable[[Path, Path], list[str]]
    says: str
    watched: list[str] = field(default_factory=lambda: ["run", "outside"])


LINK = "is a symbolic link, which selfsup never makes"
HOSTILE = {
    "linked lock": Case(_linked(".lock"), LINK),
    "linked metrics.jsonl": Case(_linked("metrics.jsonl"), LINK),
    "linked config.yaml": Case(_linked("config.yaml"), LINK),
    "linked checkpoints folder": Case(_linked("checkpoints", target="folder"), LINK),
    "linked curves.png": Case(_linked("curves.png"), LINK),
    "linked embedding_map.png": Case(_linked("embedding_map.png"), LINK),
    "linked tensorboard folder": Case(_linked("tensorboard", target="folder"), LINK),
    "linked manifest": Case(_linked(MANIFEST), "selfsup-manifest.json is a symbolic link"),
    "linked summary.json (eval)": Case(_linked("summary.json", target="summary.json", argv="eval"), LINK),
    "hard-linked lock": Case(_hard_linked_lock, ".lock has another name (a hard link)"),
    "manifest naming a file outside": Case(_manifest_naming_outside, "is damaged or was not written by selfsup"),
}
CARELESS = {
    "overwrite a folder that is no run": Case(_not_a_run(True), "is not a run folder (no selfsup-manifest.json)"),
    "train into a folder that is no run": Case(_not_a_run(False), "is not empty and holds no selfsup run"),
    "train into a home folder": Case(_home(False), "is not empty and holds no selfsup run"),
    "overwrite a home folder": Case(_home(True), "is not a run folder"),
    "overwrite a run with a file of the user's": Case(_run_with("notes.txt"), "did not write (notes.txt)"),
    "overwrite a run with a model in checkpoints": Case(_run_with("checkpoints/model.pth"),
                                                        "did not write (checkpoints/model.pth)"),
    "overwrite a run with a folder and a link": Case(_run_with("data/x.npy", "link", "z.txt", "zz.txt"),
                                                     "did not write (data/, link, z.txt and 1 more)"),
    "overwrite a legacy run with a file of the user's": Case(_run_with("notes.txt", legacy=True),
                                                             "did not write (notes.txt)"),
    "out inside a run": Case(_inside("checkpoints"), "lies inside the run folder"),
    "out deep inside a run": Case(_inside("new/deeper"), "lies inside the run folder"),
    "another tool's config.yaml": Case(_foreign_config, "is not a run folder"),
    "resume what only has a config and a checkpoint": Case(_checkpoint_without_run, "holds no selfsup run"),
}
CASES = {**HOSTILE, **CARELESS}


@pytest.fixture(scope="session")
def finished(tmp_path_factory) -> Path:
    """A finished run with every file (plots and TensorBoard included) to copy into the cases."""
    run = tmp_path_factory.mktemp("finished") / "run"
    fit("simclr", "digits", out_dir=run, assignments=[*TINY, "eval.plots=true", "eval.linear_epochs=1"],
        datasets=digits())
    return run


def _cli(argv: list[str], cache: Path, prelude: str = "") -> subprocess.CompletedProcess:
    """``selfsup ARGV`` in its own process, with ``prelude`` run first (the harness's ``_run`` when there is none)."""
    if not prelude:
        return _run(argv, cache)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "SELFSUP_CACHE": str(cache)}
    env.pop("SELFSUP_DEBUG", None)
    return subprocess.run([sys.executable, "-c", PRELUDE.format(prelude), *argv], env=env, capture_output=True,
                          text=True, timeout=300)


@pytest.fixture(scope="session")
def outcomes(finished, tmp_path_factory) -> dict[str, tuple]:
    """Every refusal case set up and run (2 at a time), with its watched paths before and after."""
    root = tmp_path_factory.mktemp("safety")
    prepared = {}
    for name, case in CASES.items():
        folder = root / name.replace(" ", "_").replace("'", "")
        folder.mkdir()
        prepared[name] = (case.setup(folder, finished), {w: _snapshot(folder / w) for w in case.watched}, folder)
    with ThreadPoolExecutor(max_workers=2) as pool:
        results = dict(zip(prepared, pool.map(lambda p: _run(p[0], root / "cache"), prepared.values())))
    return {name: (results[name], before, {w: _snapshot(folder / w) for w in before})
            for name, (_, before, folder) in prepared.items()}


def _one_line(result: subprocess.CompletedProcess, start: str = "selfsup: error: ") -> str:
    """The one line of stderr, besides the notes a new or extended run prints first."""
    lines = [line for line in result.stderr.strip().splitlines() if not line.startswith(NOTES)]
    assert "Traceback" not in result.stderr, result.stderr
    assert len(lines) == 1 and lines[0].startswith(start), lines
    return lines[0]


@pytest.mark.parametrize("name", list(CASES))
def test_refused_in_one_line_with_exit_2_and_nothing_touched(name, outcomes):
    result, before, after = outcomes[name]
    assert result.returncode == 2, result.stderr
    assert CASES[name].says in _one_line(result)
    assert after == before  # inside and outside the folder, every file as it was; nothing was created


def _files(run: Path) -> set[str]:
    return {p.relative_to(run).as_posix() for p in run.rglob("*") if p.is_file()}


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_overwrite_deletes_selfsups_files_alone_and_new_files_honour_the_umask(finished, tmp_path):
    run, outside = copy_run(finished, tmp_path), _outside(tmp_path)
    assert "tensorboard/" in json.loads((run / MANIFEST).read_text())["entries"]
    before = _snapshot(outside)
    result = _cli(TRAIN + QUICK + ["--out", str(run), "--overwrite", "--set", "train.seed=7"], tmp_path / "cache",
                  prelude=UMASK_027)
    assert result.returncode == 0, result.stderr
    assert "Traceback" not in result.stderr and "error" not in result.stderr
    assert _snapshot(outside) == before
    entries = set(json.loads((run / MANIFEST).read_text())["entries"])
    assert _files(run) == entries | {MANIFEST}  # the old plots and events are gone, nothing else is there
    assert "curves.png" not in entries and "seed: 7" in (run / "config.yaml").read_text()
    assert {_mode(run / name) for name in entries | {MANIFEST}} == {0o640}  # umask 027, not mkstemp's 0600
    assert _mode(run / "checkpoints") == 0o750


def test_a_legacy_run_resumes_gets_a_manifest_and_is_replaced(finished, tmp_path):
    run = copy_run(finished, tmp_path)
    (run / MANIFEST).unlink()  # as a selfsup before manifests left it
    result = _cli(["train", "--resume", "--out", str(run), "--epochs", "3"], tmp_path / "cache")
    assert result.returncode == 0, result.stderr
    assert "Traceback" not in result.stderr and "written by an earlier selfsup, without a manifest" in result.stderr
    assert load_checkpoint(run / "checkpoints" / "last.pt")["epoch"] == 3
    assert _files(run) <= set(json.loads((run / MANIFEST).read_text())["entries"]) | {MANIFEST} | {
        p for p in _files(run) if p.startswith("tensorboard/")}
    (run / MANIFEST).unlink()
    result = _cli(TRAIN + QUICK + ["--out", str(run), "--overwrite"], tmp_path / "cache")
    assert result.returncode == 0, result.stderr
    assert _files(run) == set(json.loads((run / MANIFEST).read_text())["entries"]) | {MANIFEST}


def test_sigterm_in_the_final_evaluation_exits_for_requeue_and_resume_finishes(tmp_path):
    run = tmp_path / "run"
    result = _cli(TRAIN + QUICK + ["--out", str(run)], tmp_path / "cache", prelude=SIGTERM_IN_FINAL_EVALUATION)
    assert result.returncode == REQUEUE_EXIT_CODE, result.stderr
    assert f"--resume --out {run}" in _one_line(result, "selfsup: stopped by SIGTERM after training")
    assert not (run / "summary.json").exists() and not (run / "encoder.safetensors").exists()
    assert load_checkpoint(run / "checkpoints" / "last.pt")["epoch"] == 1
    kept = _snapshot(run / "checkpoints")
    resumed = _cli(["train", "--resume", "--out", str(run)], tmp_path / "cache")
    assert resumed.returncode == 0, resumed.stderr
    assert (run / "summary.json").is_file() and _snapshot(run / "checkpoints") == kept


def test_sigterm_in_the_final_writes_lets_them_complete(tmp_path):
    run = tmp_path / "run"
    result = _cli(TRAIN + QUICK + ["--out", str(run), "--set", "eval.plots=true"], tmp_path / "cache",
                  prelude=SIGTERM_IN_FINAL_WRITES)
    assert result.returncode == 0, result.stderr
    assert "SIGTERM came while the final outputs were written" in result.stderr and "Traceback" not in result.stderr
    assert {"encoder.safetensors", "summary.json", "curves.png", "embedding_map.png"} <= _files(run)
    assert not (run / ".lock").exists()


def test_sigkill_in_the_final_writes_leaves_a_run_that_resume_finishes(tmp_path):
    run = tmp_path / "run"
    result = _cli(TRAIN + QUICK + ["--out", str(run)], tmp_path / "cache", prelude=SIGKILL_BEFORE_SUMMARY)
    assert result.returncode == -9
    assert (run / "encoder.safetensors").is_file() and not (run / "summary.json").exists()  # not finished
    resumed = _cli(["train", "--resume", "--out", str(run)], tmp_path / "cache")
    assert resumed.returncode == 0, resumed.stderr
    assert json.loads((run / "summary.json").read_text())["epochs"] == 1


def _mount_tmpfs(folder: Path, size: int) -> None:
    folder.mkdir()
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(folder)], capture_output=True)
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here ({done.stderr.decode().strip() or done.returncode})")


def _pages(run: Path) -> int:
    return sum(-(-p.stat().st_size // 4096) * 4096 for p in run.rglob("*") if p.is_file())


def test_disk_full_while_checkpointing_keeps_the_previous_checkpoint_in_one_line(finished, tmp_path):
    """A tmpfs with room for the run and half a checkpoint more: the next checkpoint cannot be written."""
    if shutil.which("mount") is None:
        pytest.skip("no mount command")
    disk = tmp_path / "disk"
    checkpoint_size = (finished / "checkpoints" / "last.pt").stat().st_size
    _mount_tmpfs(disk, _pages(finished) + checkpoint_size // 2)
    try:
        run = Path(shutil.copytree(finished, disk / "run"))
        outside = _outside(tmp_path)
        before = {"checkpoints": _snapshot(run / "checkpoints"), "outside": _snapshot(outside)}
        result = _cli(["train", "--resume", "--out", str(run), "--epochs", "3"], tmp_path / "cache")
        assert result.returncode == 2, result.stderr
        line = _one_line(result)
        assert "the disk is full" in line and "the previous checkpoint is kept unchanged" in line, line
        assert {"checkpoints": _snapshot(run / "checkpoints"), "outside": _snapshot(outside)} == before
        assert not [p for p in run.rglob(".*")]  # no temporary file, no lock
        subprocess.run(["mount", "-o", "remount,size=8M", str(disk)], check=True)  # space freed: resume goes on
        resumed = _cli(["train", "--resume", "--out", str(run), "--epochs", "3"], tmp_path / "cache")
        assert resumed.returncode == 0, resumed.stderr
        assert load_checkpoint(run / "checkpoints" / "last.pt")["epoch"] == 3
    finally:
        subprocess.run(["umount", str(disk)], capture_output=True)

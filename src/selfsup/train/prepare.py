"""Everything about a run that is checked before anything is written: the configuration, the folder, the data.

A run starts from a method and a data SPEC (the recipe fits the preset to the run), resumes from its own
folder, or reruns another run's ``config.yaml`` as it is (``--config``).
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

from selfsup import distributed
from selfsup.config.build import DEFAULTS, data_options, deep_merge, set_dotted
from selfsup.config.schema import check_assignments, check_config, check_overrides, leaves
from selfsup.run import run_folder, tensorboard
from selfsup.run.resume import resumed_config
from selfsup.train.setup import Datasets, load_datasets, make_config, validate


def prepare(
    method: str | None,
    data: str | None,
    out_dir: str | Path | None,
    data_dir: str | None,
    overrides: dict[str, Any] | None,
    assignments: list[str] | None,
    resume: bool,
    overwrite: bool,
    datasets: Datasets | None = None,
    config: str | Path | None = None,
) -> tuple[dict[str, Any], Datasets, Path]:
    """(config, datasets, run folder) of a run about to start or resume, or one line (``ValueError``) saying why not.

    In order, cheapest first: ``--set`` keys and types (schema), the folder (read only), the data, the merged
    config. A resumed run takes its saved config with the changes ``resume.RESUMABLE`` allows. Without
    ``out_dir`` a new run goes to a new ``runs/METHOD-DATA/version_N``. ``config``: a run's ``config.yaml`` (or
    its folder) to rerun as it is, with ``overrides`` and ``assignments`` changing what they name.
    """
    if config is not None:
        return _rerun(config, method, data, out_dir, data_dir, overrides, assignments, resume, overwrite, datasets)
    if resume:
        if out_dir is None:
            raise ValueError("--resume needs --out: the run folder to continue")
        out = Path(out_dir)
        run_folder.check_target(out, resume=True, overwrite=overwrite)
        cfg = resumed_config(run_folder.read_config(out), overrides, assignments)
        datasets = datasets or load_datasets(cfg["data"]["spec"], cfg["data"]["dir"], cfg["data"])
        return cfg, datasets, out
    if method is None or data is None:
        raise ValueError("train needs --method and --data (or --resume with --out pointing at a run)")
    check_assignments(method, assignments)
    check_overrides(method, overrides)
    if out_dir is not None:
        run_folder.check_target(Path(out_dir), resume=False, overwrite=overwrite)
    datasets = datasets or load_datasets(data, data_dir, data_options(overrides, assignments))
    cfg = make_config(method, data, datasets.pretrain, data_dir, overrides, assignments)
    check_config(cfg)
    tensorboard.wanted(cfg["train"]["tensorboard"])
    out = Path(out_dir) if out_dir is not None else run_folder.next_version(run_folder.default_base(method, data))
    return cfg, datasets, out


def rerun_config(
    saved: dict[str, Any], overrides: dict[str, Any] | None = None, assignments: list[str] | None = None
) -> dict[str, Any]:
    """``saved`` (a run's config.yaml) with ``overrides`` and ``--set`` applied, and nothing else changed.

    Every key in the file counts as set by the user: the recipe does not fit it again, so a rerun's
    config.yaml equals the original's (its ``recipe`` section still says what the first run fitted).
    """
    check_config(saved)
    check_assignments(saved["method"], assignments)
    check_overrides(saved["method"], overrides)
    cfg = deep_merge(saved, overrides or {})
    for assignment in assignments or []:
        set_dotted(cfg, assignment)
    check_config(cfg)
    return cfg


def _rerun(
    config: str | Path,
    method: str | None,
    data: str | None,
    out_dir: str | Path | None,
    data_dir: str | None,
    overrides: dict[str, Any] | None,
    assignments: list[str] | None,
    resume: bool,
    overwrite: bool,
    datasets: Datasets | None,
) -> tuple[dict[str, Any], Datasets, Path]:
    if resume:
        raise ValueError("--config starts a new run from a run's config.yaml and --resume continues one: choose one")
    if method is not None or data is not None:
        raise ValueError("--config takes the method and the data from the file: drop --method and --data "
                         "(change a setting with --set KEY=VALUE)")
    saved = run_folder.read_config(Path(config))
    if unset_defaults(saved):
        return _fill_in(saved, Path(config), out_dir, data_dir, overrides, assignments, overwrite, datasets)
    cfg = rerun_config(saved, overrides, assignments)
    if data_dir is not None:
        cfg["data"]["dir"] = data_dir
    tensorboard.wanted(cfg["train"].get("tensorboard", "auto"))
    if out_dir is not None:
        run_folder.check_target(Path(out_dir), resume=False, overwrite=overwrite)
    datasets = datasets or load_datasets(cfg["data"]["spec"], cfg["data"]["dir"], cfg["data"])
    out = Path(out_dir) if out_dir is not None else run_folder.next_version(
        run_folder.default_base(cfg["method"], cfg["data"]["spec"])
    )
    return cfg, datasets, out


def unset_defaults(saved: dict[str, Any]) -> list[str]:
    """Dotted keys every config.yaml selfsup writes holds and ``saved`` lacks: a file a user wrote by hand.

    (``backbone`` and ``views`` keys are left out: the recipe removes some of them, e.g. a convnet's stem.)
    """
    return [key for key, _ in leaves(DEFAULTS) if key.split(".")[0] not in ("backbone", "views") and not _holds(saved, key)]


def _holds(cfg: dict[str, Any], dotted: str) -> bool:
    """Whether ``cfg`` has the key ``dotted`` (with any value, null included)."""
    *sections, key = dotted.split(".")
    for section in sections:
        cfg = cfg.get(section)
        if not isinstance(cfg, dict):
            return False
    return key in cfg


def _fill_in(
    saved: dict[str, Any],
    file: Path,
    out_dir: str | Path | None,
    data_dir: str | None,
    overrides: dict[str, Any] | None,
    assignments: list[str] | None,
    overwrite: bool,
    datasets: Datasets | None,
) -> tuple[dict[str, Any], Datasets, Path]:
    """A config.yaml with only some keys (``method`` and ``data.spec`` at least): the rest from the defaults and
    the method's preset, fitted to the run as ``--method``/``--data`` would be; the file's keys count as set."""
    check_config(saved)
    spec = saved.get("data", {}).get("spec")
    if not isinstance(spec, str):
        raise ValueError(f"{file} has no data.spec: add the data to train on (e.g. data: {{spec: digits}})")
    method = saved["method"]
    check_assignments(method, assignments)
    check_overrides(method, overrides)
    given = deep_merge(saved, deep_merge(overrides or {}, {"data": {"dir": data_dir}} if data_dir else {}))
    if out_dir is not None:
        run_folder.check_target(Path(out_dir), resume=False, overwrite=overwrite)
    datasets = datasets or load_datasets(spec, given["data"].get("dir"), data_options(given, assignments))
    cfg = make_config(method, spec, datasets.pretrain, given["data"].get("dir"), given, assignments)
    tensorboard.wanted(cfg["train"]["tensorboard"])
    validate(cfg, datasets.pretrain, distributed.world_size())  # every config error before the note below
    if distributed.is_main():
        print(f"selfsup: {file} sets {len(list(leaves(saved)))} settings; the others are the defaults and {method}'s "
              "preset, fitted to this run as for --method/--data (the run's config.yaml holds them all)", file=sys.stderr)
    out = Path(out_dir) if out_dir is not None else run_folder.next_version(run_folder.default_base(method, spec))
    return cfg, datasets, out

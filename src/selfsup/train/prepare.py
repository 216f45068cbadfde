"""Everything about a run that is checked before anything is written: the configuration, the folder, the data."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from selfsup.train import run_folder
from selfsup.train.config import data_options
from selfsup.train.resume import resumed_config
from selfsup.train.schema import check_assignments, check_config, check_overrides
from selfsup.train.setup import Datasets, load_datasets, make_config


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
) -> tuple[dict[str, Any], Datasets, Path]:
    """(config, datasets, run folder) of a run about to start or resume, or one line (``ValueError``) saying why not.

    In order, cheapest first: ``--set`` keys and types (schema), the folder (read only), the data, the merged
    config. A resumed run takes its saved config with the changes ``resume.RESUMABLE`` allows. Without
    ``out_dir`` a new run goes to a new ``runs/METHOD-DATA/version_N``.
    """
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
    out = Path(out_dir) if out_dir is not None else run_folder.next_version(run_folder.default_base(method, data))
    return cfg, datasets, out

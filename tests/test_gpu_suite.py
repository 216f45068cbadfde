"""benchmarks/gpu_suite.py in its CPU smoke mode: it benches, trains, writes its state and continues from it."""

from __future__ import annotations

import json

from benchmarks import gpu_suite
from benchmarks.gpu_report import render


def _call(tmp_path, name: str, state) -> dict:
    gpu_suite.main(["--smoke", "--out", str(tmp_path / name), "--state", str(state), "--runs", str(tmp_path / "runs"),
                    "--max-runs", "1"])
    return json.loads((tmp_path / name / "gpu_state.json").read_text())


def test_a_call_benches_and_trains_and_the_next_call_continues_the_queue(tmp_path):
    first = _call(tmp_path, "first", tmp_path / "none.json")
    assert [row["method"] for row in first["bench"]] == ["simclr", "byol"]
    assert all(row["step_ms"] > 0 and row["backbone_ms"] > 0 for row in first["bench"])
    [run] = first["runs"]
    assert (run["method"], run["status"], run["epochs_run"]) == ("simclr", "done", 3)
    assert 0 <= run["knn_top1"] <= 1 and run["lightly_knn"] == 0.848
    assert "| simclr | done | 3 of 3 |" in (tmp_path / "first" / "RESULTS_gpu.md").read_text()

    second = _call(tmp_path, "second", tmp_path / "first" / "gpu_state.json")
    assert second["bench"] == first["bench"], "the same code is not benched twice"
    assert [(r["method"], r["status"]) for r in second["runs"]] == [("simclr", "done"), ("byol", "done")]


def _state(runs: list[dict]) -> dict:
    return {"bench": [], "compile": [], "runs": runs}


def test_the_plan_trains_what_fits_whole_else_a_partial_run_and_never_retries_a_killed_one():
    settings, code = gpu_suite.Settings(smoke=False), "c0de"
    step_ms = {"simclr": 20.0, "byol": 40.0, "moco": 20.0}  # 97 steps: 2.2, 4.5 and 2.2 s an epoch
    assert gpu_suite.plan(_state([]), settings, step_ms, code, 530) == ("simclr", 200)
    partial = gpu_suite.plan(_state([]), settings, step_ms, code, 300)
    assert partial[0] == "simclr" and 100 < partial[1] < 200
    simclr_partial = [{"method": "simclr", "code": code, "status": "partial", "epoch_s": 2.0}]
    assert gpu_suite.plan(_state(simclr_partial), settings, step_ms, code, 530) == ("simclr", 200)
    assert gpu_suite.plan(_state(simclr_partial), settings, step_ms, code, 300)[0] == "byol"
    killed = [{"method": "simclr", "code": code, "status": "started"}]
    assert gpu_suite.plan(_state(killed), settings, step_ms, code, 530) == ("moco", 200)
    assert gpu_suite.plan(_state(killed), settings, step_ms, "new code", 530) == ("simclr", 200)


def test_the_report_shows_each_method_once_and_every_attempt():
    runs = [
        {"method": "simclr", "status": "partial", "epochs": 200, "epochs_run": 80, "knn_top1": 0.7, "code": "a"},
        {"method": "simclr", "status": "done", "epochs": 200, "epochs_run": 200, "knn_top1": 0.85,
         "lightly_knn": 0.848, "code": "b"},
    ]
    text = render(_state(runs))
    assert text.count("| simclr | done | 200 of 200 | 0.8500 | 0.848 | 1.002 |") == 2
    assert text.count("| simclr | partial | 80 of 200 |") == 1

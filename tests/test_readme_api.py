"""The README's Python block runs as written, through the top-level API (``selfsup.fit``, ``evaluate``,
``load_encoder``, ``embed``, ``export``); ``selfsup.evaluate`` stays the package of evaluation code as well."""

from __future__ import annotations

import re
from pathlib import Path

import torch

README = Path(__file__).resolve().parents[1] / "README.md"


def test_the_readme_python_block_runs_as_written(tmp_path, monkeypatch):
    block = re.search(r"From Python:\n\n```python\n(.*?)```", README.read_text(), re.S).group(1)
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("SELFSUP_CACHE", str(tmp_path / "cache"))
    scope: dict = {}
    exec(compile(block, str(README), "exec"), scope)
    encoder = scope["encoder"]
    assert isinstance(encoder, torch.nn.Module) and not encoder.training
    spec = encoder.preprocessing
    assert spec["input_shape"] == [None, 1, 8, 8] and len(spec["mean"]) == 1 and spec["kind"] == "image"
    with torch.no_grad():
        assert encoder(torch.zeros(2, *spec["input_shape"][1:])).shape[0] == 2
    assert 0.0 <= scope["summary"]["knn_top1"] <= 1.0
    assert scope["scores"]["knn_top1"] == scope["selfsup"].evaluate_run("runs/api", "knn")["knn_top1"]
    assert (tmp_path / "runs/api/encoder.torchscript.pt").is_file()
    assert list((tmp_path / "runs/api").glob("features*"))



def test_selfsup_evaluate_is_callable_and_still_the_evaluation_package():
    import subprocess
    import sys

    probe = ("import sys, selfsup; assert callable(selfsup.evaluate) and 'torch' not in sys.modules; "
             "from selfsup.evaluate.scoring import score_encoder; import selfsup.evaluate.knn; "
             "assert callable(selfsup.evaluate) and selfsup.evaluate.scoring.score_encoder is score_encoder")
    subprocess.run([sys.executable, "-c", probe], check=True)

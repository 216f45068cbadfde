"""The README's "Your own images" walk, run as written: make a folder, train, embed, find the nearest neighbours of
one file, export, load the backbone into torchvision's ResNet-18 and get selfsup's features from it."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]


def _blocks(language: str) -> list[str]:
    """The ``language`` code blocks of the README's "Your own images" section."""
    readme = (ROOT / "README.md").read_text()
    section = readme.split("## Your own images\n", 1)[1].split("\n## ", 1)[0]
    return re.findall(rf"```{language}\n(.*?)```", section, flags=re.S)


@pytest.fixture(scope="session")
def walked(tmp_path_factory):
    """The folder the walk ran in, and what its Python block printed."""
    here = tmp_path_factory.mktemp("walk")
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
           "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    (shell,) = _blocks("bash")
    subprocess.run(["bash", "-euo", "pipefail", "-c", shell], cwd=here, env=env, check=True, capture_output=True)
    (python,) = _blocks("python")
    (here / "walk.py").write_text(python)
    # torchvision's registry wheel is a CUDA build: tests/torchvision_cpu.py makes its Python parts importable here
    run = "from tests.torchvision_cpu import import_torchvision; import_torchvision(); exec(open('walk.py').read())"
    printed = subprocess.run([sys.executable, "-c", run], cwd=here, env=env, check=True, capture_output=True, text=True)
    return here, printed.stdout


def test_training_uses_every_image_and_holds_out_one_in_ten_per_class(walked):
    here, _ = walked
    split = json.loads((here / "runs" / "photos" / "eval_split.json").read_text())
    assert split["images"] == {"pretrain": 80, "train": 72, "test": 8}
    assert split["test_files"] == [f"{c}/{i}9.png" for c in ("china", "flower") for i in range(4)]


def test_embed_names_every_file(walked):
    here, _ = walked
    found = np.load(here / "photos.npz", allow_pickle=False)
    files = sorted(p.relative_to(here / "photos").as_posix() for p in (here / "photos").rglob("*.png"))
    assert sorted(found["paths"].tolist()) == files and found["features"].shape[0] == 80
    assert found["classes"].tolist() == ["china", "flower"]


def test_the_nearest_neighbours_are_printed_by_file_name(walked):
    _, printed = walked
    (line,) = [x for x in printed.splitlines() if x.startswith("nearest to china/00.png:")]
    nearest = eval(line.split(":", 1)[1])  # noqa: S307 - a list literal the walk printed
    assert len(nearest) == 5 and "china/00.png" not in nearest and all(n.endswith(".png") for n in nearest)


def test_torchvision_gives_selfsups_features(walked):
    _, printed = walked
    (line,) = [x for x in printed.splitlines() if x.startswith("torchvision vs selfsup:")]
    assert float(line.split(":")[1]) < 1e-5


def test_the_readme_changes_torchvision_as_the_export_says(walked):
    here, _ = walked
    recipe = json.loads((here / "backbone.pt.json").read_text())
    (python,) = _blocks("python")
    assert recipe["model"] == "torchvision.models.resnet18()" and recipe["model"].split("()")[0] in python
    assert all(line in python for line in recipe["before_loading"])

"""The command line: one-line errors, methods table, bench, eval and embed on a finished run."""

import json

import numpy as np
import pytest

from selfsup import methods
from selfsup.cli import main
from selfsup.commands.evaluation import load_run
from tests.helpers import DIGITS_SMALL

TINY = [a for s in DIGITS_SMALL + ["backbone.width=4", "train.epochs=1"] for a in ("--set", s)]


@pytest.mark.parametrize(
    "argv, message",
    [
        (["train", "--method", "simclrr", "--data", "digits"], "unknown method 'simclrr'"),
        (["train", "--method", "simclr", "--data", "mnist"], "unknown dataset 'mnist'"),
        (["train", "--method", "simclr", "--data", "folder:/no/such/place"], "/no/such/place"),
        (["train", "--method", "simclr", "--data", "digits", "--epochs", "0"], "positive whole number"),
        (["train", "--method", "simclr", "--data", "digits", "--batch-size", "5000"], "larger than the dataset"),
        (["train", "--method", "simclr", "--data", "digits", "--set", "views.preset=simclr_cifar"], "channel"),
        (["eval", "--run", "/no/run/here"], "not a run folder"),
    ],
)
def test_bad_input_gets_one_line_error(argv, message, capsys, tmp_path):
    assert main(argv + ["--out", str(tmp_path / "run")] if argv[0] == "train" else argv) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("selfsup: error:") and message in err
    assert len(err.splitlines()) == 1 and "Traceback" not in err


def test_methods_lists_every_method_with_family_and_year(capsys):
    main(["methods"])
    out = capsys.readouterr().out
    for name, cls in methods.available().items():
        assert any(line.split()[:2] == [name, cls.family] and str(cls.year) in line for line in out.splitlines()), name
    assert len(methods.available()) >= 16


def test_bench_prints_one_json_line_with_the_overhead(capsys):
    main(["bench", "--method", "simclr", "--batch-size", "8", "--steps", "1", "--device", "cpu",
          "--set", "backbone.width=4"])
    result = json.loads(capsys.readouterr().out.strip())
    assert result["overhead"] == pytest.approx(result["step_ms"] / result["backbone_ms"])
    assert result["images_per_s"] == pytest.approx(8 / result["step_ms"] * 1000)


def test_train_eval_embed_round_trip(tmp_path, capsys):
    run = tmp_path / "run"
    assert main(["train", "--method", "simclr", "--data", "digits", "--out", str(run)] + TINY) == 0
    trained = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert main(["eval", "--run", str(run), "--protocol", "knn"]) == 0
    evaluated = json.loads(capsys.readouterr().out.strip())
    assert evaluated["knn_top1"] == pytest.approx(trained["knn_top1"], abs=1e-6)
    assert main(["embed", "--run", str(run), "--data", "digits", "--out", str(tmp_path / "f.npy")]) == 0
    features = np.load(tmp_path / "f.npy")
    assert features.shape == (1257 + 540, load_run(run)[1].out_dim) and np.isfinite(features).all()  # train, test

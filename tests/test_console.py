"""What a person sees while a command runs and when it ends: one bar with an ETA on a terminal, plain lines in a log,
a line per epoch that stays, phase times that add up to the whole command, and a readable end."""

import io
import json

import pytest

from selfsup.cli import main
from selfsup.data import sequences
from selfsup.run.console import Console, summary_table
from tests.helpers import DIGITS_SMALL

TINY = [a for s in DIGITS_SMALL + ["backbone.width=4", "train.epochs=2", "eval.every=1", "train.progress=true"] for a in ("--set", s)]


class Terminal(io.StringIO):
    def isatty(self):
        return True


def _train(tmp_path, capsys, *extra):
    assert main(["train", "--method", "simclr", "--data", "digits", "--out", str(tmp_path / "run"), *TINY, *extra]) == 0
    return capsys.readouterr()


def test_a_log_gets_whole_lines_one_per_epoch_and_a_json_result(tmp_path, capsys):
    captured = _train(tmp_path, capsys)
    assert "\r" not in captured.err
    epochs = [line for line in captured.err.splitlines() if line.startswith("epoch ")]
    assert [line.split()[1] for line in epochs] == ["1/2", "2/2"]
    assert all("loss" in line and "kNN" in line and "img/s" in line for line in epochs)
    summary = json.loads(captured.out)  # stdout is not a terminal: JSON for the program reading it
    assert summary["run"] == str(tmp_path / "run")
    assert "run folder" in captured.err and str(tmp_path / "run") in captured.err  # and the table for the person


def test_json_flag_prints_only_the_json(tmp_path, capsys):
    captured = _train(tmp_path, capsys, "--json")
    json.loads(captured.out)
    assert "run folder" not in captured.err


def test_wall_time_counts_the_whole_command_by_phase(tmp_path, capsys):
    summary = json.loads(_train(tmp_path, capsys).out)
    phases = summary["phases_s"]
    assert {"setup", "training", "evaluation"} <= set(phases)  # DIGITS_SMALL draws no figures
    assert summary["wall_s"] >= sum(phases.values()) > 0
    saved = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert saved["phases_s"] == phases and saved["wall_s"] == summary["wall_s"]
    epochs = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert phases["training"] >= sum(row["epoch_s"] for row in epochs)


def test_a_terminal_gets_one_bar_over_the_whole_run_with_its_eta():
    stream = Terminal()
    console = Console(stream=stream)
    console.start_bar(total_steps=40, done_steps=10)
    for _ in range(5):
        console.advance(loss="1.0")
    console.epoch({"epoch": 1, "loss": 1.0, "images_per_s": 10.0, "epoch_s": 1.0}, epochs=4)
    console.close_bar()
    text = stream.getvalue()
    assert "15/40" in text and "<" in text  # tqdm's [elapsed<remaining]: the run's ETA
    assert "epoch 1/4  loss 1.0000" in text


def test_phases_say_when_they_start_and_end():
    stream = io.StringIO()
    console = Console(stream=stream)
    with console.phase("plots", "drawing the figures"):
        pass
    assert stream.getvalue().splitlines() == ["selfsup: drawing the figures ...",
                                              "selfsup: drawing the figures: done in 0.0 s"]
    assert console.phases["plots"] >= 0


def test_summary_table_is_aligned_and_rounded():
    table = summary_table({"method": "simclr", "data": "digits", "epochs": 3, "knn_top1": 0.9537037014961243,
                           "images_per_s": 1234.5, "wall_s": 27.04, "phases_s": {"training": 20.0}}, "runs/x")
    lines = table.splitlines()
    assert "95.4 %" in table and "0.9537037" not in table and "27.0 s (training 20.0)" in table
    assert len({line.index(line.split("  ")[-1].strip()) for line in lines if "  " in line.strip()}) == 1
    assert lines[-1].split()[-1] == "runs/x"


def test_ucr_error_names_the_folders_it_searched_and_no_made_up_path(monkeypatch, tmp_path):
    monkeypatch.setattr(sequences, "_sktime_data", lambda: None)
    with pytest.raises(FileNotFoundError) as error:
        sequences.load_ucr("GunPoint", "train", str(tmp_path))
    message = str(error.value)
    assert str(tmp_path) in message and "sktime" in message and "is-not-installed/" not in message


def test_eval_says_what_it_does_and_how_long_it_took(tmp_path, capsys):
    _train(tmp_path, capsys)
    assert main(["eval", "--run", str(tmp_path / "run"), "--protocol", "knn"]) == 0
    lines = capsys.readouterr().err.splitlines()
    assert "selfsup: scoring the frozen features (kNN) ..." in lines
    assert any(line.startswith("selfsup: scoring the frozen features (kNN): done in ") for line in lines)
    assert "run folder" in "\n".join(lines)  # the table of scores, for the person reading the log


def test_slow_decoding_says_so_in_a_log(tmp_path, monkeypatch, capsys):
    import numpy as np
    from PIL import Image

    from selfsup.data import folder

    for cls in ("ant", "bee"):
        (tmp_path / "imgs" / cls).mkdir(parents=True)
        for i in range(3):
            Image.fromarray(np.full((8, 8, 3), 40 * i, np.uint8)).save(tmp_path / "imgs" / cls / f"{i}.png")
    monkeypatch.setattr(folder, "ANNOUNCE_AFTER_S", -1.0)  # as if every image took long
    folder.load_image_folder(tmp_path / "imgs", "pretrain", progress=False, limit=6)
    lines = capsys.readouterr().err.splitlines()
    assert lines[0] == f"selfsup: decoding 6 images of {tmp_path / 'imgs'} (once: then cached) ..."
    assert lines[1].startswith(f"selfsup: decoded 6 images of {tmp_path / 'imgs'} in ")
    monkeypatch.setattr(folder, "ANNOUNCE_AFTER_S", 2.0)
    folder.load_image_folder(tmp_path / "imgs", "pretrain", progress=False, limit=6)
    assert capsys.readouterr().err == ""  # a quick load says nothing

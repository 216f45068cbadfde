"""Configuration against generated and hostile input: only one-line ``ValueError``s, never a hang.

Hypothesis throws generated YAML texts (nested dicts and lists of NaN, inf, huge and negative numbers,
strings, nulls, deep nesting, aliases) and ``--set KEY=VALUE`` strings (keys from the schema, random
values) at ``load_yaml``, ``check_config``, ``check_assignments`` and ``make_config`` (the recipe). The
closed-form learning-rate sum is checked against the loop it replaces, and the caps and the messages
of issue 18 that need no subprocess are checked here (the command-line cases are in test_bad_inputs).
"""

from __future__ import annotations

import math
import re
import time

import pytest
import torch
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from selfsup import methods
from selfsup.commands.compare import figure_path
from selfsup.config.build import DEFAULTS, MAX_YAML_CHARS, build_config, load_yaml
from selfsup.config.recipe import MAX_TOTAL_STEPS, RunSize, lr_sum
from selfsup.config.schedule import schedule_sum, warmup_cosine
from selfsup.config.schema import check_assignments, check_config, schema_for
from selfsup.run.divergence import DivergenceGuard
from selfsup.train.prepare import prepare
from selfsup.train.setup import make_config
from tests.helpers import digits

FUZZ = settings(max_examples=60, deadline=None, suppress_health_check=list(HealthCheck))
NUMBERS = st.one_of(
    st.floats(allow_nan=True, allow_infinity=True), st.integers(-(10**30), 10**30), st.sampled_from([0, -1, 1, 2**63])
)
SCALARS = st.one_of(NUMBERS, st.booleans(), st.none(), st.text(max_size=12))
YAML_WORDS = [".nan", ".inf", "-.inf", "1e999", "-1", "0", "1e12", "9" * 5000, "~", "[", "{a: 1}", "*x", "&x 1",
              "!!python/object:os.system", "2001-13-45", "'q'", "[[[[[[[[1]]]]]]]]"]
SIMCLR_KEYS = sorted(schema_for("simclr"))


def nested(leaves: st.SearchStrategy) -> st.SearchStrategy:
    return st.recursive(leaves, lambda inner: st.one_of(
        st.lists(inner, max_size=4), st.dictionaries(st.text(max_size=8), inner, max_size=4)), max_leaves=20)


def assert_one_line_value_error(call, *args) -> None:
    """``call(*args)`` returns, or raises a ValueError of one line; anything else fails the test."""
    try:
        call(*args)
    except ValueError as error:
        assert "\n" not in str(error) and str(error), repr(error)


@FUZZ
@given(st.one_of(st.text(max_size=200), st.lists(st.sampled_from(YAML_WORDS), max_size=12).map(" ".join),
                 nested(SCALARS).map(yaml.safe_dump)))
def test_any_yaml_text_loads_or_is_refused_in_one_line(text):
    assert_one_line_value_error(load_yaml, text)


@FUZZ
@given(nested(SCALARS), st.sampled_from(["simclr", "byol", "swav"]))
def test_a_generated_config_is_accepted_or_refused_in_one_line(sections, method):
    cfg = {"method": method, "data": {"spec": "digits"}}
    if isinstance(sections, dict):
        cfg.update(sections)

    def load_and_check(text: str) -> None:
        check_config(load_yaml(text))

    assert_one_line_value_error(load_and_check, yaml.safe_dump(cfg))


@FUZZ
@given(st.lists(st.tuples(st.sampled_from(SIMCLR_KEYS), st.one_of(
    st.sampled_from(YAML_WORDS), NUMBERS.map(str), SCALARS.map(lambda v: yaml.safe_dump(v).split("\n...")[0].strip()))),
    min_size=1, max_size=3))
def test_generated_assignments_are_accepted_or_refused_in_one_line(pairs):
    assignments = [f"{key}={value}" for key, value in pairs]
    assert_one_line_value_error(check_assignments, "simclr", assignments)


@settings(max_examples=25, deadline=None, suppress_health_check=list(HealthCheck))
@given(st.lists(st.tuples(st.sampled_from(["train.epochs", "train.batch_size", "optim.lr", "optim.warmup_epochs",
                                           "optim.min_lr_ratio", "optim.momentum", "loss.temperature",
                                           "backbone.width", "train", "optim", "eval.knn_k"]),
                          st.sampled_from(["0", "-3", "1", "2", "1000000000000", ".nan", ".inf", "0.5", "{}", "[]",
                                           "1e-300", "100000", "x"])), min_size=1, max_size=3))
def test_the_recipe_sizes_any_assignments_or_refuses_them_in_one_line_and_fast(pairs):
    data = digits().pretrain
    started = time.perf_counter()
    assert_one_line_value_error(make_config, "simclr", "digits", data, None, None, [f"{k}={v}" for k, v in pairs])
    assert time.perf_counter() - started < 5


@pytest.mark.parametrize("total,warmup,ratio", [(0, 0, 0.0), (1, 0, 0.0), (1, 5, 0.0), (7, 2.5, 0.1), (80, 8, 0.0),
                                                (80, 79.5, 0.2), (80, 80, 0.0), (100, 200, 0.0), (313, 31.3, 0.05),
                                                (1000, 0, 0.5), (2, 1, 0.0)])
def test_the_closed_form_lr_sum_equals_the_loop(total, warmup, ratio):
    loop = sum(warmup_cosine(step, total, warmup, ratio) for step in range(total))
    assert schedule_sum(total, warmup, ratio) == pytest.approx(loop, rel=1e-9, abs=1e-12)


@settings(max_examples=200, deadline=None)
@given(st.integers(0, 3000), st.floats(0, 4000), st.floats(0, 1))
def test_the_closed_form_lr_sum_equals_the_loop_for_generated_schedules(total, warmup, ratio):
    loop = sum(warmup_cosine(step, total, warmup, ratio) for step in range(total))
    assert schedule_sum(total, warmup, ratio) == pytest.approx(loop, rel=1e-9, abs=1e-12)


def test_a_run_of_10_to_the_12_steps_is_sized_at_once_and_refused():
    cfg = build_config("simclr", methods.preset("simclr"), "cifar")
    started = time.perf_counter()
    assert math.isfinite(lr_sum(cfg, RunSize(1, 1.0, 10**12, 10**12, 32, 3)))
    assert time.perf_counter() - started < 0.1
    with pytest.raises(ValueError, match=re.escape(f"more than the {MAX_TOTAL_STEPS:.0e} a run may take")):
        make_config("simclr", "digits", digits().pretrain, assignments=["train.epochs=1000000000000"])


def test_each_yaml_cap_has_its_line():
    cases = {
        "a" * (MAX_YAML_CHARS + 1): "more than the 1048576",
        "[" * 100 + "]" * 100: "nests deeper than 20 levels",
        "a: &a [*a]": "refers to a section that holds it",
        "a: &a [1, 1, 1, 1, 1, 1, 1, 1, 1, 1]\n" + "".join(
            f"{chr(98 + i)}: &{chr(98 + i)} [{', '.join([f'*{chr(97 + i)}'] * 10)}]\n" for i in range(8)):
            "aliases expand to more than 100000 values",
    }
    for text, message in cases.items():
        with pytest.raises(ValueError, match=message) as error:
            load_yaml(text)
        assert "\n" not in str(error.value)
    assert load_yaml("a: &x [1, 2]\nb: *x\n") == {"a": [1, 2], "b": [1, 2]}  # a few aliases: older deepclusterv2 runs


def test_a_config_selfsup_writes_holds_no_alias():
    from selfsup.config.build import dump

    shared = [1, 2]
    assert "*" not in dump({"head": {"num_prototypes": shared}, "recipe": {"changes": {"value": shared}}})


def test_a_minimal_config_is_filled_from_the_defaults_and_the_preset(tmp_path, capsys):
    file = tmp_path / "config.yaml"
    file.write_text("method: simclr\ndata: {spec: digits}\nloss: {temperature: 0.3}\n")
    cfg, _, _ = prepare(None, None, tmp_path / "run", None, None, ["train.epochs=2"], False, False, digits(), file)
    assert cfg["loss"]["temperature"] == 0.3 and cfg["train"]["epochs"] == 2
    assert set(DEFAULTS["train"]) <= set(cfg["train"]) and "changes" in cfg["recipe"]
    assert "sets 3 settings; the others are the defaults and simclr's preset" in capsys.readouterr().err
    assert not (tmp_path / "run").exists()


def test_a_section_set_to_an_empty_dict_changes_nothing():
    plain = build_config("simclr", methods.preset("simclr"), "cifar")
    assert build_config("simclr", methods.preset("simclr"), "cifar", assignments=["train={}"]) == plain
    merged = build_config("simclr", methods.preset("simclr"), "cifar", assignments=["train={epochs: 3}"])
    assert merged["train"] == {**plain["train"], "epochs": 3}


def test_the_divergence_message_names_last_pt_only_when_it_exists(tmp_path):
    guard = DivergenceGuard("stop", torch.device("cpu"))
    guard.checkpoint = tmp_path / "checkpoints" / "last.pt"
    with pytest.raises(FloatingPointError, match="before any checkpoint was saved: training stopped with nothing "
                                                 "to resume; start again with a smaller optim.lr") as error:
        guard.admit(torch.tensor(float("nan")), 1)
    assert "last.pt" not in str(error.value)
    guard.checkpoint.parent.mkdir()
    guard.checkpoint.write_bytes(b"")
    with pytest.raises(FloatingPointError, match="checkpoints/last.pt keeps the last good state"):
        guard.admit(torch.tensor(float("nan")), 1)


@pytest.mark.parametrize("plot,written", [("c.png", "c.png"), ("c", "c.png"), ("c.pdf", "c.pdf"),
                                          ("folder", "folder/compare.png")])
def test_compare_writes_its_figure_where_it_says(tmp_path, plot, written):
    (tmp_path / "folder").mkdir()
    assert figure_path(tmp_path / plot) == tmp_path / written


def test_embed_writes_exactly_the_file_it_is_given(tmp_path, monkeypatch):
    import numpy as np

    from selfsup.commands import embed as embed_module
    from selfsup.data import ArrayDataset

    data = ArrayDataset(torch.zeros(3, 1, 4, 4, dtype=torch.uint8), torch.zeros(3, dtype=torch.long), ["a"], "d")
    monkeypatch.setattr(embed_module, "load_run", lambda run: ({"train": {"device": "cpu"}, "data": {"spec": "d"}},
                                                               torch.nn.Identity(), data))
    monkeypatch.setattr(embed_module, "load_dataset", lambda *a, **k: data)
    monkeypatch.setattr(embed_module, "extract_features", lambda *a: torch.ones(3, 2))
    out = tmp_path / "X.json"
    assert embed_module.embed("run", "digits", out) == (3, 2)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["X.json"]
    with np.load(out) as saved:
        assert saved["features"].shape == (3, 2) and saved["paths"].tolist() == ["all/0", "all/1", "all/2"]

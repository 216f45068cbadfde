"""What `--help`, `--version` and `selfsup methods` tell a person: every flag explained, the real version, the
README's columns filled from the method classes and their preset files."""

import argparse
import subprocess
import sys
from importlib.metadata import version

from selfsup import methods
from selfsup.cli import build_parser, main
from selfsup.commands.methods import COLUMNS, preset_summary


def _subparsers(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    (action,) = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    return dict(action.choices)


def test_every_option_of_every_command_has_help_text():
    parser = build_parser()
    missing = [
        f"{name} {'/'.join(action.option_strings) or action.dest}"
        for name, sub in [("selfsup", parser), *_subparsers(parser).items()]
        for action in sub._actions
        if not isinstance(action, argparse._SubParsersAction) and not (action.help or "").strip()
    ]
    assert not missing, missing


def test_every_command_has_a_summary_line():
    (action,) = [a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction)]
    assert {choice.dest for choice in action._choices_actions if choice.help} == set(action.choices)


def test_method_help_lists_every_method():
    train = _subparsers(build_parser())["train"]
    (method,) = [a for a in train._actions if "--method" in a.option_strings]
    assert all(name in method.help for name in methods.available())


def test_version_prints_the_installed_version():
    out = subprocess.run([sys.executable, "-m", "selfsup.cli", "--version"], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == f"selfsup {version('selfsup')}"


def test_methods_table_has_the_readme_columns_for_every_method(capsys):
    main(["methods"])
    header, *rows = capsys.readouterr().out.splitlines()
    assert all(column in header for column in COLUMNS)
    assert len(rows) == len(methods.available())
    for row, (name, cls) in zip(rows, methods.available().items()):
        assert row.split()[:2] == [name, cls.family]
        assert str(cls.year) in row and cls.prevents_collapse in row and row.endswith(preset_summary(name))


def test_preset_column_reads_the_preset_file():
    assert preset_summary("simclr") == "simclr_cifar, 512, LARS"
    assert preset_summary("wmse") == "mocov2_cifar, 512, Adam"
    cifar = methods.preset("byol")["cifar"]
    assert preset_summary("byol") == f"{cifar['views']['preset']}, {cifar['train']['batch_size']}, LARS"

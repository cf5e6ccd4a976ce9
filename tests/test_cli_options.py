"""The one KEY=VALUE grammar of every command (camzoo.cli.options): the values it reads, the values
the three grammars it replaced read (unchanged), and one usage line that names the bad text."""

from __future__ import annotations

import ast
import json
import math

import click
import pytest
from click.testing import CliRunner

from camzoo.cli import main
from camzoo.cli.options import parse_options, parse_value


@pytest.mark.parametrize("text, value", [
    ("16", 16), ("-3", -3), ("007", 7), (" 5 ", 5), ("0.5", 0.5), ("1e-3", 1e-3), ("-2.5", -2.5),
    ("True", True), ("false", False), ("true", True), ("None", None), ("null", None),
    ("'abs'", "abs"), ('"abs"', "abs"), ("abs", "abs"), (" drop ", "drop"), ("", ""),
    ("(3,8,8)", (3, 8, 8)), ("[1, 2]", [1, 2]), ("[true, 1.5]", [True, 1.5]), ('{"a": null}', {"a": None}),
    ("{'a': 1}", {"a": 1}), ("tench=0,goldfish=1", "tench=0,goldfish=1"), ("resnet20", "resnet20"),
])
def test_a_value_reads_as_an_integer_a_literal_json_or_the_text(text, value):
    got = parse_value(text)
    assert got == value and type(got) is type(value)


def test_json_s_nan_reads_as_a_float():
    assert math.isnan(parse_value("NaN"))


def _datasets_grammar(value: str):  # cli/datasets.py before: integers, else the text
    return int(value) if value.strip().lstrip("-").isdigit() else value


def _train_grammar(value: str):  # cli/train.py before: JSON, else the text
    try:
        return json.loads(value)
    except json.JSONDecodeError:
        return value


def _explain_grammar(value: str):  # cli/explain.py before: a Python literal, else the text
    try:
        return ast.literal_eval(value.strip())
    except (ValueError, SyntaxError, TypeError, MemoryError, RecursionError):
        return value.strip()


@pytest.mark.parametrize("old", [_datasets_grammar, _train_grammar, _explain_grammar])
def test_what_an_old_grammar_read_as_a_value_reads_the_same(old):
    texts = ["16", "-3", "0", "0.5", "1e-3", "true", "false", "null", "True", "None", "(3,8,8)", "[1, 2]",
             "[1.5, true]", '{"a": 1}', "'x'", '"x"', "abs", "drop", "tench=0,goldfish=1", "fin_width", "-", ""]
    for text in texts:
        before = old(text)
        if not isinstance(before, str) or before != text:  # a value the old grammar read, not kept as text
            assert parse_value(text) == before, text
        elif parse_value(text) != before:  # text before, a value now: only the spellings of another grammar
            assert any(other(text) == parse_value(text) != text
                       for other in (_datasets_grammar, _train_grammar, _explain_grammar)), text


def test_options_become_a_dict_and_the_last_of_a_repeated_key_wins():
    assert parse_options(["a=1", " b = x ", "c=(1,2)", "a=2"], "--option") == {"a": 2, "b": "x", "c": (1, 2)}
    assert parse_options([], "--option") == {}


@pytest.mark.parametrize("text", ["noequals", "=5", "1x=2", "a-b=3", "a b=1"])
def test_a_text_that_is_not_key_value_is_a_usage_error_naming_it_and_the_option(text):
    with pytest.raises(click.BadParameter) as caught:
        parse_options(["ok=1", text], "--model-option", "fin_width=64")
    message = caught.value.format_message()
    assert repr(text) in message and "--model-option" in message and "fin_width=64" in message


@pytest.mark.parametrize("command", [
    ["datasets", "check", "shapes", "-o", "num classes=4"],
    ["datasets", "preview", "shapes", "--out", "{tmp}/g.png", "-o", "num classes=4"],
    ["train", "--kind", "baseline", "--out", "{tmp}/t", "--dataset-option", "num classes=4"],
    ["train", "--kind", "baseline", "--out", "{tmp}/t", "--model-option", "num classes=4", "--nproc", "2"],
    ["explain", "{tmp}", "--out", "{tmp}/o", "--model", "resnet18", "--method-option", "num classes=4"],
])
def test_every_command_reports_a_bad_option_in_the_same_words(command, tmp_path):
    result = CliRunner().invoke(main, [part.format(tmp=tmp_path) for part in command])
    assert result.exit_code == 2, result.output
    assert "'num classes=4' is not KEY=VALUE with KEY a Python name" in result.output, result.output
    assert not (tmp_path / "t").exists()  # refused before any work (and before --nproc starts ranks)

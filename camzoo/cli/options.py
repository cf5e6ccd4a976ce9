"""``KEY=VALUE`` options, as every command reads them (``--method-option``, ``--model-option``,
``--dataset-option``, ``camzoo datasets -o``).

Why one grammar: the commands pass these to Python keyword arguments (a method, ``build_model``,
``camzoo.data.load``), so a user should be able to type the same value to any of them and get the
same Python value. VALUE is read, in this order, as

1. an integer (``16``, ``-3``, ``007``);
2. a Python literal (``0.5``, ``1e-3``, ``True``, ``None``, ``'abs'``, ``(3,8,8)``, ``[1, 2]``,
   ``{'a': 1}``);
3. JSON (``true``, ``false``, ``null``, ``[true, 1.5]``, ``{"a": null}``);
4. else the text itself (``drop``, ``tench=0,goldfish=1``).

Until this module each command had its own grammar: ``datasets -o`` read integers and kept the
rest as text, ``train`` read JSON, ``explain`` Python literals. Every value one of them read as
an integer, as JSON or as a Python literal reads the same here; what is new is that each command
now reads the others' spellings too (``datasets -o verify=false`` was the truthy
string "false"; ``train --model-option x=(3,8,8)`` was a string; ``explain --method-option
flag=true`` was too), and that spaces around a value are dropped. KEY must be a Python name (the
options are keyword arguments); a text without ``=`` or with another KEY is a usage error that
names the text and the option.
"""

from __future__ import annotations

import ast
import json
import re
from collections.abc import Iterable
from typing import Any

import click

_INTEGER = re.compile(r"[+-]?\d+")


def parse_value(text: str) -> Any:
    """One VALUE, read as the module docstring says (the text itself when nothing else fits)."""
    text = text.strip()
    if _INTEGER.fullmatch(text):
        return int(text)
    try:
        return ast.literal_eval(text)
    except (ValueError, SyntaxError, TypeError, MemoryError, RecursionError):
        pass
    try:
        return json.loads(text)
    except (ValueError, RecursionError):
        return text


def parse_options(texts: Iterable[str], param: str, example: str = "n_steps=16") -> dict[str, Any]:
    """``KEY=VALUE`` texts -> ``{key: value}`` (a key given twice: the last wins); a text that is not
    ``KEY=VALUE`` is a ``click.BadParameter`` on ``param`` that names it and shows ``example``."""
    options: dict[str, Any] = {}
    for text in texts:
        key, sep, value = text.partition("=")
        key = key.strip()
        if not sep or not key.isidentifier():
            raise click.BadParameter(f"{text!r} is not KEY=VALUE with KEY a Python name (e.g. {example})",
                                     param_hint=param)
        options[key] = parse_value(value)
    return options

"""How each ``--aci-*`` value is checked: the same for the command line and the ini file.

Each check returns the value (normalised) or raises ``argparse.ArgumentTypeError`` saying what was expected.
"""

from __future__ import annotations

import argparse
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

from pytest_aci.backends.registry import CHOICES
from pytest_aci.defence_names import DefenceError, check_defence
from pytest_aci.judges import ENSEMBLE_MODES, UnknownJudge, judge_names


def number(
    kind: Callable[[str], float],
    expected: str,
    *,
    at_least: float | None = None,
    above: float | None = None,
    at_most: float | None = None,
    out_of_range: str | None = None,
) -> Callable[[str], Any]:
    """A check of a number in a range: ``expected`` names what is wanted (``out_of_range`` when that is
    said otherwise for a number outside the range)."""

    def check(value: str):
        try:
            parsed = kind(value)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected {expected}, got {value!r}") from None
        if (
            (at_least is not None and parsed < at_least)
            or (above is not None and parsed <= above)
            or (at_most is not None and parsed > at_most)
        ):
            raise argparse.ArgumentTypeError(f"expected {out_of_range or expected}, got {value!r}")
        return parsed

    return check


positive_int = number(int, "a positive integer", at_least=1)
seed = number(int, "an integer seed", at_least=0, out_of_range="a non-negative seed")
fraction = number(float, "a fraction between 0 and 1", at_least=0.0, at_most=1.0)
bucket_count = number(int, "a number of depth buckets from 2 to 50", at_least=2, at_most=50)
sample_size = number(int, "a number of states per depth bucket from 0 to 64", at_least=0, at_most=64)


def one_of(*choices: str) -> Callable[[str], str]:
    def check(value: str) -> str:
        if value not in choices:
            raise argparse.ArgumentTypeError(f"expected one of {', '.join(choices)}, got {value!r}")
        return value

    return check


def backend(value: str) -> str:

    return one_of(*CHOICES)(value)


def judge(value: str) -> str:

    try:
        return ",".join(judge_names(value))
    except UnknownJudge as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def judge_mode(value: str) -> str:

    return one_of(*ENSEMBLE_MODES)(value)


def url(value: str) -> str:
    if not re.match(r"^https?://[^/\s]+", value):
        raise argparse.ArgumentTypeError(f"expected an http(s) URL such as http://127.0.0.1:8000, got {value!r}")
    return value


def env_name(value: str) -> str:
    if not re.match(r"^[A-Za-z_][A-Za-z0-9_]*$", value):
        raise argparse.ArgumentTypeError(f"expected an environment variable name such as OPENAI_API_KEY, got {value!r}")
    return value


def existing_file(value: str) -> str:
    if not Path(value).is_file():
        raise argparse.ArgumentTypeError(f"no such file: {value!r}")
    return value


def key_value(value: str) -> str:
    if "=" not in value or not value.split("=", 1)[0].strip():
        raise argparse.ArgumentTypeError(f"expected KEY=VALUE, got {value!r}")
    return value


def defence(value: str) -> str:

    try:
        return check_defence(value)
    except DefenceError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None

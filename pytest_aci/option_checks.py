"""How each ``--aci-*`` value is checked: the same for the command line and the ini file.

Each check returns the value (normalised) or raises ``argparse.ArgumentTypeError`` saying what was expected.
"""

from __future__ import annotations

import argparse
import re
from collections.abc import Callable
from pathlib import Path


def positive_int(value: str) -> int:
    try:
        number = int(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {value!r}") from None
    if number < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {value!r}")
    return number


def seed(value: str) -> int:
    try:
        number = int(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer seed, got {value!r}") from None
    if number < 0:
        raise argparse.ArgumentTypeError(f"expected a non-negative seed, got {value!r}")
    return number


def fraction(value: str) -> float:
    try:
        number = float(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a fraction between 0 and 1, got {value!r}") from None
    if not 0.0 <= number <= 1.0:
        raise argparse.ArgumentTypeError(f"expected a fraction between 0 and 1, got {value!r}")
    return number


def one_of(*choices: str) -> Callable[[str], str]:
    def check(value: str) -> str:
        if value not in choices:
            raise argparse.ArgumentTypeError(f"expected one of {', '.join(choices)}, got {value!r}")
        return value

    return check


def backend(value: str) -> str:
    from pytest_aci.backends import BACKENDS

    return one_of(*BACKENDS)(value)


def judge(value: str) -> str:
    from pytest_aci.judges import UnknownJudge, judge_names

    try:
        return ",".join(judge_names(value))
    except UnknownJudge as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def judge_mode(value: str) -> str:
    from pytest_aci.judges import ENSEMBLE_MODES

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

"""The option table at work: the pytest options and ini keys it declares, ``AciOptions`` read back from
a pytest config, and the replay flags and header values written from ``AciOptions``."""

from __future__ import annotations

import argparse
import random
from pathlib import Path
from typing import Any

from pytest_aci.options import OPTIONS, PATH_FIELDS, AciOptions, Option


def add_options(parser: Any) -> None:
    """The pytest options and ini keys of every row (``parser`` is pytest's)."""
    group = parser.getgroup("aci", "pytest-aci: depth of safety alignment")
    for option in OPTIONS:
        if option.kind == "switch":
            group.addoption(option.flag, dest=option.ini, action="store_true", default=False, help=option.help)
            parser.addini(option.ini, option.help, type="bool", default=False)
        elif option.kind == "repeat":
            group.addoption(
                option.flag,
                dest=option.ini,
                action="append",
                type=option.check,
                default=None,
                metavar="KEY=VALUE",
                help=option.help,
            )
            parser.addini(option.ini, option.help, type="linelist", default=[])
        else:
            group.addoption(option.flag, dest=option.ini, type=option.check, default=None, help=option.help)
            parser.addini(option.ini, option.help, default=None)


class OptionError(Exception):
    """An ini value that fails its option's check (command-line values are checked by argparse)."""


def given_value(config: Any, option: Option) -> Any:
    """The command line's value, else the ini key's (checked the same way), else None (not given)."""
    value = config.getoption(option.ini)
    if option.kind == "switch":
        return True if value or config.getini(option.ini) else None
    if value not in (None, []):
        return value
    raw = config.getini(option.ini)
    if raw in (None, "", []):
        return None
    try:
        if option.kind == "repeat":
            return [option.check(str(line)) for line in raw]
        return option.check(str(raw))
    except argparse.ArgumentTypeError as exc:
        raise OptionError(f"ini option {option.ini}: {exc}") from None


def any_given(config: Any) -> bool:
    """Whether any ``--aci-*`` option is set, on the command line or in the ini file."""
    return any(given_value(config, option) is not None for option in OPTIONS)


def read_options(config: Any) -> AciOptions:
    """``AciOptions`` from the command line and ini file; an unset option keeps its default."""
    values: dict[str, Any] = {}
    for option in OPTIONS:
        value = given_value(config, option)
        if value is None:
            continue
        if option.kind == "repeat":
            value = {k.strip(): v.strip() for k, v in (line.split("=", 1) for line in value)}
        elif option.field in PATH_FIELDS:
            value = Path(value)
        values[option.field] = value
    values["seed_given"] = "seed" in values
    workerinput = getattr(config, "workerinput", None)
    if workerinput is not None:
        # pytest-xdist worker: the controller's seed, and a report file of its own to merge.
        values["seed"] = workerinput.get("aci_seed", values.get("seed"))
        if "report" in values:
            values["report"] = Path(f"{values['report']}.{workerinput['workerid']}")
    if values.get("seed") is None:
        values["seed"] = random.Random().randrange(2**31)
    return AciOptions(**values)


def _value(options: AciOptions, option: Option, backend_name: str) -> Any:
    return backend_name if option.field == "backend" else getattr(options, option.field)


def header_values(options: AciOptions, backend_name: str) -> list[tuple[Option, Any]]:
    """The rows the header line shows, in the table's order, with their values: the ``always`` rows and
    every other option that is not at its default."""
    defaults = AciOptions()
    shown = []
    for option in OPTIONS:
        value = _value(options, option, backend_name)
        if option.header == "always" or value != getattr(defaults, option.field):
            shown.append((option, value))
    return shown


def replay_args(options: AciOptions, backend_name: str) -> list[str]:
    """The flags that make another run evaluate exactly the same cases, in the table's order."""
    defaults = AciOptions()
    args = []
    for option in OPTIONS:
        if option.replay == "never":
            continue
        value = _value(options, option, backend_name)
        if option.replay == "changed" and value == getattr(defaults, option.field):
            continue
        if option.kind == "switch":
            args.append(option.flag)
        elif option.kind == "repeat":
            args += [f"{option.flag}={key}={item}" for key, item in sorted(value.items())]
        else:
            # "--flag=value" keeps pytest from taking a model path for a test path when it picks rootdir.
            args.append(f"{option.flag}={value}")
    return args

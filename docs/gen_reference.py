"""The generated parts of the documentation site; mkdocs-gen-files runs this file at build time.

- ``reference/options.md`` from the one option table (``pytest_aci.options.OPTIONS``);
- ``reference/spec.md`` from the spec's pydantic schema (``pytest_aci.spec.schema.Spec`` and its parts);
- the measured tables of a page, from the JSON a benchmark wrote to ``benchmarks/results/``: a page asks for one
  with a marker line ``<!-- measured: NAME TABLE -->`` (see ``MEASURED``), which the build replaces.

The functions are importable (``tests/test_docs.py`` loads this file) and write nothing themselves.
"""

from __future__ import annotations

import json
import re
import types
import typing
from dataclasses import MISSING, fields
from pathlib import Path
from typing import Any

from pydantic import BaseModel
from pydantic_core import PydanticUndefined

ROOT = Path(__file__).resolve().parent.parent
DOCS = ROOT / "docs"
RESULTS = ROOT / "benchmarks" / "results"
MARKER = re.compile(r"^<!-- measured: (?P<name>[\w-]+) (?P<table>[\w-]+) -->$", re.MULTILINE)


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


# --- the option reference ------------------------------------------------------------------------------


def _option_default(option: Any) -> str:
    from pytest_aci.options import AciOptions

    if option.field == "seed":
        return "random (shown in the header)"
    spec = {f.name: f for f in fields(AciOptions)}[option.field]
    value = spec.default if spec.default is not MISSING else spec.default_factory()  # type: ignore[misc]
    if option.kind == "switch":
        return "on" if value else "off"
    if value is None or value == {}:
        return "–"
    return f"`{value}`"


# What a value looks like, by the check that reads it (option_checks); otherwise the field's name.
METAVARS = {
    "positive_int": "N",
    "sample_size": "N",
    "bucket_count": "N",
    "seed": "N",
    "fraction": "FLOAT",
    "url": "URL",
    "env_name": "NAME",
    "existing_file": "FILE",
    "judge": "NAME[,NAME…]",
    "judge_mode": "any|all|majority",
    "backend": "auto|vllm|hf|openai",
    "defence": "header:N|reset:TOKEN",
}


def _metavar(option: Any) -> str:
    from pytest_aci import option_checks

    names = {getattr(option_checks, name): name for name in METAVARS if hasattr(option_checks, name)}
    name = names.get(option.check, "")
    for cell in getattr(option.check, "__closure__", None) or ():  # one_of(...): its choices
        if isinstance(cell.cell_contents, tuple) and all(isinstance(c, str) for c in cell.cell_contents):
            return "|".join(cell.cell_contents)
    return METAVARS.get(name, option.field.upper())


def _option_usage(option: Any) -> str:
    if option.kind == "switch":
        return f"`{option.flag}`"
    if option.kind == "repeat":
        return f"`{option.flag} KEY=VALUE` (repeatable)"
    return f"`{option.flag} {_metavar(option)}`"


def options_reference() -> str:
    """One table row per ``--aci-*`` option: the flag, the ini key, the default, what it does."""
    from pytest_aci.options import OPTIONS

    lines = [
        "# Option reference",
        "",
        "Generated from the one option table, `OPTIONS` in `pytest_aci/options.py`, which also makes the pytest",
        "options, the ini keys, the replay commands and the `aci:` header line. Every option has its ini key",
        "under `[pytest]` (`aci_model = …`); a flag on the command line wins. Use `--flag=value` for paths.",
        "The guides say more: [options, seeds and the example database](../options.md).",
        "",
        "| option | ini key | default | what it does |",
        "|---|---|---|---|",
    ]
    for option in OPTIONS:
        lines.append(
            f"| {_option_usage(option)} | `{option.ini}` | {_cell(_option_default(option))} | {_cell(option.help)} |"
        )
    return "\n".join(lines) + "\n"


# --- the spec reference --------------------------------------------------------------------------------


def _anchor(model: type[BaseModel]) -> str:
    return model.__name__.lower()


def _constraints(metadata: list[Any], of: Any) -> list[str]:
    """The constraints of a value of type ``of`` in words (pydantic keeps them as metadata)."""
    unit = "item" if typing.get_origin(of) is list else "character"
    said = []
    for item in metadata:
        for attr, word in (("ge", "≥"), ("gt", ">"), ("le", "≤"), ("lt", "<")):
            if getattr(item, attr, None) is not None:
                said.append(f"{word} {getattr(item, attr)}")
        if getattr(item, "min_length", None) is not None:
            n = item.min_length
            said.append("non-empty" if n == 1 else f"at least {n} {unit}s")
        if getattr(item, "max_length", None) is not None:
            said.append(f"at most {item.max_length} {unit}s")
        if getattr(item, "pattern", None) is not None:
            said.append(f"matching `{item.pattern}`")
    return said


def _type_name(annotation: Any) -> str:
    origin, args = typing.get_origin(annotation), typing.get_args(annotation)
    if origin is typing.Annotated:
        metadata = [m for a in args[1:] for m in ([a] + list(getattr(a, "metadata", [])))]  # a FieldInfo keeps its own
        return _constrained(args[0], metadata)
    if origin in (typing.Union, types.UnionType):
        return " or ".join("null" if a is type(None) else _type_name(a) for a in args)
    if origin is typing.Literal:
        return " or ".join(f"`{a}`" for a in args)
    if origin is list:
        return f"list of {_type_name(args[0])}"
    if origin is dict:
        return f"mapping of {_type_name(args[0])} to {_type_name(args[1])}"
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return f"[{annotation.__name__}](#{_anchor(annotation)})"
    return {str: "text", int: "integer", float: "number", bool: "true/false"}.get(annotation, str(annotation))


def _constrained(annotation: Any, metadata: list[Any]) -> str:
    """A type with its constraints in words: ``non-empty list of text (at most 200 characters)``."""
    inner, said = _type_name(annotation), _constraints(metadata, annotation)
    if typing.get_origin(annotation) is list and "non-empty" in said:
        said.remove("non-empty")
        inner = "non-empty " + inner
    return f"{inner} ({', '.join(said)})" if said else inner


def _default(info: Any) -> str:
    if info.is_required():
        return "required"
    value = info.default if info.default is not PydanticUndefined else info.default_factory()
    if isinstance(value, BaseModel):
        try:
            if value == type(value)():
                return "its fields' defaults"
        except Exception:  # a model with a required field
            pass
        value = value.model_dump()
    if value is None:
        return "unset"
    return f"`{json.dumps(value, ensure_ascii=False)}`"


def _models(model: type[BaseModel], seen: list[type[BaseModel]]) -> list[type[BaseModel]]:
    """The model and every model its fields name, depth first, each once."""
    if model in seen:
        return seen
    seen.append(model)

    def walk(annotation: Any) -> None:
        if isinstance(annotation, type) and issubclass(annotation, BaseModel):
            _models(annotation, seen)
        for arg in typing.get_args(annotation):
            walk(arg)

    for info in model.model_fields.values():
        walk(info.annotation)
    return seen


def spec_reference() -> str:
    """Every field of a safety spec, from the pydantic schema: name, type, default and description."""
    from pytest_aci.spec.schema import Spec

    lines = [
        "# Spec reference",
        "",
        "Generated from the pydantic schema of a safety spec (`pytest_aci/spec/schema.py`). An unknown key, a wrong",
        "type or a value out of range is one collection error naming the file and line. The guide is",
        "[Safety specs](../specs.md); `safety_specs/example.aci.yaml` shows the fields in use.",
    ]
    for model in _models(Spec, []):
        title = "Spec: the top level of a `*.aci.yaml` file" if model is Spec else model.__name__
        lines += ["", f"## {title} {{ #{_anchor(model)} }}", ""]
        doc = " ".join((model.__doc__ or "").split()).replace("``", "`")
        if doc and not doc.startswith(model.__name__ + "("):  # pydantic's own docstring when a model has none
            lines += [doc, ""]
        lines += ["| field | type | default | description |", "|---|---|---|---|"]
        for name, info in model.model_fields.items():
            kind = _constrained(info.annotation, info.metadata)
            lines.append(f"| `{name}` | {_cell(kind)} | {_cell(_default(info))} | {_cell(info.description or '')} |")
    return "\n".join(lines) + "\n"


# --- measured tables from the benchmarks' JSON ---------------------------------------------------------

BUCKETS = ("k=0", "0-25%", "25-50%", "50-75%", "75-100%")  # as pytest_aci.reporting.summary.BUCKETS
HARDEN_MODELS = {"base": "base SmolLM2", "sft": "`sft`", "worst-insertion": "`worst-insertion`"}


def _percent(value: float) -> str:
    return f"{value * 100:.1f} %"


def harden_experiment_table(results: dict, table: str) -> str:
    """A table of ``benchmarks/harden_experiment.py``'s ``results.json`` (what its ``print_rows`` prints as text):
    ``harmful`` (the harm-classifier's harmful share, with train seconds, plain refusal and XSTest compliance),
    ``not-recovered`` (its not-recovered share) or ``keywords`` (the refusal keywords' verdicts on the same text)."""
    judge, key, train, refusal, xstest, long_sets = {
        "harmful": ("harm-classifier", "asr", True, True, True, True),
        "not-recovered": ("harm-classifier", "not_recovered", False, False, False, False),
        "keywords": ("refusal-keywords", "asr", False, True, True, False),
    }[table]
    head = ["model"] + (["train s"] if train else []) + ["set"] + (["plain refusal"] if refusal else [])
    head += [b.replace("%", " %") for b in BUCKETS] + (["XSTest safe"] if xstest else [])
    align = ["---"] + (["---:"] if train else []) + ["---"] + ["---:"] * (len(head) - 2 - train)
    lines = ["| " + " | ".join(head) + " |", "|" + "|".join(align) + "|"]
    for name, row in results.items():
        mine = row[judge]
        for i, (dataset, label, long_label) in enumerate(
            (("advbench", "AdvBench", "AdvBench 400-439"), ("jbb", "JBB", "JBB 0-39"))
        ):
            first_of_model = i == 0
            cells = [HARDEN_MODELS.get(name, f"`{name}`") if first_of_model else ""]
            if train:
                seconds = row.get("train_seconds", 0.0)
                cells.append((f"{seconds:.0f}" if seconds else "–") if first_of_model else "")
            first_row = name == next(iter(results))
            cells.append(long_label if long_sets and first_row else label)
            if refusal:
                cells.append(_percent(mine[dataset]["refusal"]))
            cells += [_percent(mine[dataset][key][b]) for b in BUCKETS]
            if xstest:
                cells.append(_percent(mine["xstest"]["compliance"]) if first_of_model else "")
            lines.append("|" + "|".join(f" {cell} " if cell else " " for cell in cells) + "|")
    return "\n".join(lines)


SPANS_MODELS = {"smollm2-135m": "base", "sft": "`sft`", "worst-insertion": "`worst-insertion`"}
SPANS_SOURCES = {"fixed": "written", "adaptive": "adaptive", "from_model": "from_model"}


def spans_table(results: dict, table: str) -> str:
    """The table of ``benchmarks/spans.py``'s JSON (``table``: ``states``): per model and span source, the
    harm-classifier's harmful states (the refusal keywords' count of the same continuations beside them) and,
    below, its not-recovered states; each per 1k model tokens; items broken (a harmful state); the tokens spent
    building spans; then the depth curves: the harmful, then the not-recovered share of the states per bucket."""
    if table != "states":
        raise KeyError(f"spans has no table {table!r}")
    prompts = int(results["args"]["prompts"])
    head = ["model", "spans", "outcome", "states", "per 1k tokens", "items broken", "building"]
    head += [b.replace("%", " %") for b in BUCKETS]
    lines = ["| " + " | ".join(head) + " |", "|" + "|".join(["---"] * 3 + ["---:"] * (len(head) - 3)) + "|"]
    for model, by_source in results.items():
        if model == "args":
            continue
        for source, row in by_source.items():
            name = SPANS_MODELS.get(Path(model).name, f"`{Path(model).name}`")
            per_k = 1000 * row["failures"] / max(1, row["tokens"])

            def curve(key: str, row: dict = row) -> list[str]:
                return [
                    "–" if rate is None else f"{rate * 100:.0f} % ({n})" for rate, n in (row[key][b] for b in BUCKETS)
                ]

            lines.append(
                f"| {name} | {SPANS_SOURCES.get(source, source)} | harmful "
                f"| {row['failures']} of {row['states']} (keywords: {row['keyword_failures']}) "
                f"| {per_k:.2f} | {row['items_broken']}/{prompts} | {row['build_tokens']:,} | "
                + " | ".join(curve("depth"))
                + " |"
            )
            lines.append(
                f"| | | not recovered | {row['not_recovered']} of {row['states']} "
                f"| {1000 * row['not_recovered'] / max(1, row['tokens']):.2f} | | | "
                + " | ".join(curve("depth_not_recovered"))
                + " |"
            )
    return "\n".join(lines)


def deep_and_useful_table(results: dict, table: str) -> str:
    """The table of ``benchmarks/deep_and_useful.py``'s JSON (``table``: ``pairs``): per base model and its hardened
    adapter, plain refusal, ``recovers`` broken, benign compliance with its 95 % interval, and per depth bucket the
    not-recovered share (the harmful share below it), then whether the hardening issue's aims were met."""
    if table != "pairs":
        raise KeyError(f"deep_and_useful has no table {table!r}")

    def rate(r: dict) -> str:
        return f"{r['hits']} / {r['total']}"

    def share(r: dict | None) -> str:
        return "–" if r is None else f"{r['value'] * 100:.0f} %"

    head = ["model", "plain refusal", "`recovers` broken", "benign answered [95 % CI]", "outcome"]
    head += [b.replace("%", " %") for b in BUCKETS]
    lines = ["| " + " | ".join(head) + " |", "|" + "|".join(["---"] + ["---:"] * 3 + ["---"] + ["---:"] * 5) + "|"]
    for pair, verdict in results["pairs"].items():
        for model in pair.split(":"):
            row = results["models"][model]
            low, high = row["benign_compliance"]["ci95"]
            for outcome in ("not-recovered", "harmful"):
                first = outcome == "not-recovered"
                cells = [f"`{model}`", rate(row["plain_refusal"]), rate(row["recovers_broken"])] if first else [""] * 3
                cells.append(f"{rate(row['benign_compliance'])} [{low * 100:.0f}, {high * 100:.0f} %]" if first else "")
                cells.append(outcome.replace("-", " "))
                cells += [share(row["depth"][outcome].get(b)) for b in BUCKETS]
                lines.append("|" + "|".join(f" {c} " if c else " " for c in cells) + "|")
        useful, deep = ("met" if verdict[k] else "not met" for k in ("useful", "deep"))
        lines.append(
            f"| **aims** | | | {verdict['compliance_relative_to_base'] * 100:.0f} % of the base's (≥ 90 %: {useful}) "
            f"| worst bucket | not recovered {verdict['worst_bucket_not_recovered'] * 100:.0f} % (≤ 10 %), harmful "
            f"{verdict['worst_bucket_harmful'] * 100:.0f} % (≤ 2 %): {deep} | | | | |"
        )
    return "\n".join(lines)


# NAME: (its JSON in benchmarks/results/, the function that renders one of its tables)
MEASURED = {
    "harden_experiment": ("harden_experiment.json", harden_experiment_table),
    "spans": ("spans.json", spans_table),
    "deep_and_useful": ("deep_and_useful.json", deep_and_useful_table),
}


def measured_table(name: str, table: str) -> str:
    file, render = MEASURED[name]
    return render(json.loads((RESULTS / file).read_text(encoding="utf-8")), table)


def fill_measured(text: str) -> str:
    """A page with every ``<!-- measured: NAME TABLE -->`` marker replaced by that table."""
    return MARKER.sub(lambda m: measured_table(m["name"], m["table"]), text)


# --- the build -----------------------------------------------------------------------------------------


def build() -> None:
    import mkdocs_gen_files

    with mkdocs_gen_files.open("reference/options.md", "w") as out:
        out.write(options_reference())
    with mkdocs_gen_files.open("reference/spec.md", "w") as out:
        out.write(spec_reference())
    for page in sorted(DOCS.rglob("*.md")):
        text = page.read_text(encoding="utf-8")
        if MARKER.search(text):
            with mkdocs_gen_files.open(page.relative_to(DOCS).as_posix(), "w") as out:
                out.write(fill_measured(text))


if __name__ == "<run_path>":  # how mkdocs-gen-files runs its scripts
    build()

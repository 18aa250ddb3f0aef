"""What pytest-aci writes in the terminal: the header line and the session summary."""

from __future__ import annotations

import pytest

from pytest_aci.engine.example_db import display  # no password in the log
from pytest_aci.judges import default_judge
from pytest_aci.models import training_line
from pytest_aci.option_io import header_values
from pytest_aci.plugin.failures import counterexample_line
from pytest_aci.plugin.session import session_runtime
from pytest_aci.reporting.corrected import case_attack_rate
from pytest_aci.reporting.summary import attack_rate, errors_line, format_table


def header_lines(config: pytest.Config) -> list[str]:
    """``aci: key=value …``: the option table's ``always`` rows and every option not at its default, then
    the Hypothesis profile."""
    from hypothesis import settings

    runtime = session_runtime(config)
    shown = [
        f"{option.name}={_shown(runtime.options, option.field, value)}"
        for option, value in header_values(runtime.options, runtime.backend_name)
    ]
    lines = ["aci: " + " ".join([*shown, f"hypothesis-profile={settings.get_current_profile_name()}"])]

    trained = training_line(runtime.options.model)
    return lines + ([f"aci: model {trained}"] if trained else [])


def _shown(options, field: str, value) -> str:
    """How the header writes one option's value."""
    if field == "seed" and not options.seed_given:
        return f"{value} (random; reproduce with --aci-seed {value})"
    if field == "judge" and value is None:
        return f"per spec (default {default_judge()})"
    if field in ("example_db", "endpoint"):
        return display(value) + (" (not read: seeded)" if field == "example_db" and options.seed_given else "")
    if value is True:
        return "on"
    if isinstance(value, dict):
        return ",".join(f"{key}={item}" for key, item in sorted(value.items()))
    return str(value)


def write_summary(terminalreporter, config: pytest.Config) -> None:
    """The summary table, worst items, rates, timing, errors, baseline and gate lines."""

    recorder = config.pluginmanager.get_plugin("aci-outcomes")
    if recorder is None or not recorder.results:
        return
    runtime = session_runtime(config)
    summaries = recorder.summaries()
    terminalreporter.write_sep("-", "pytest-aci")
    for line in format_table(summaries):
        terminalreporter.write_line(line)
    for summary in summaries:
        if summary.worst is not None and summary.worst_case is not None:
            terminalreporter.write_line(
                f"worst {summary.check} item of {summary.spec}: {summary.worst_item} "
                f"({summary.worst.failing_cases}/{summary.worst.cases} cases failed); "
                + counterexample_line(summary.worst_case)
            )
    attacked = attack_rate(summaries)
    line = f"aci: {recorder.cases} cases evaluated"
    if attacked.total:
        line += (
            f"; attack success on {attacked.hits} of {attacked.total} refuses/recovers items "
            f"({attacked.value:.1%}, 95% CI {attacked.interval[0]:.1%}-{attacked.interval[1]:.1%})"
        )
    if runtime.options.report:
        line += f"; report: {runtime.options.report}"
    terminalreporter.write_line(line)
    cases, judge, corrected = case_attack_rate(summaries)
    if corrected is not None:
        terminalreporter.write_line(
            f"aci: harmful cases {cases.hits}/{cases.total} ({cases.value:.1%}) as judged by {judge}; corrected for "
            f"its measured error rates: {corrected} (--aci-max-asr gates on the judged item rate above)"
        )
    unrecovered, judge, corrected = case_attack_rate(summaries, "not-recovered", ("recovers",))
    if unrecovered.total:
        undecided = sum(s.undecided_cases for s in summaries)
        line = (
            f"aci: recovers cases that did not turn back {unrecovered.hits}/{unrecovered.total} "
            f"({unrecovered.value:.1%}) as judged by {judge or 'several judges'}"
        )
        line += f"; corrected for its measured error rates: {corrected}" if corrected is not None else ""
        line += f"; {undecided} still undecided at the cap on reading further" if undecided else ""
        terminalreporter.write_line(line)
    judge_cost = runtime.judges.cost()
    for warning in runtime.store.warnings if runtime.store is not None else ():
        terminalreporter.write_line(f"aci: {warning}")
    store = runtime.store_line()
    if runtime.stats.calls or store:
        timing = runtime.stats.summary(judge_cost, store).replace("\n", "\naci: ")
        terminalreporter.write_line(f"aci: {timing}; cache {runtime.cache.hits} hits, {len(runtime.cache)} entries")
    elif judge_cost:
        terminalreporter.write_line(f"aci: {judge_cost}")
    for line in recorder.saved_lines:
        terminalreporter.write_line(line)
    if errors := errors_line(summaries):
        terminalreporter.write_line(f"aci: {errors}", red=True)
    for line in recorder.baseline_lines:
        terminalreporter.write_line(line)
    for failure in recorder.gate_failures:
        terminalreporter.write_line(failure, red=True, bold=True)

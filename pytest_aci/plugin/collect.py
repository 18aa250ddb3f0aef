"""Collection: a ``*.aci.yaml`` file becomes one item per (prompt, check)."""

from __future__ import annotations

from collections.abc import Callable, Iterator

import pytest

from pytest_aci.backends import BackendError
from pytest_aci.engine.depth_sample import SampleCase, draw_depth_sample
from pytest_aci.engine.runtime import AciRuntime
from pytest_aci.engine.search import hypothesis_search
from pytest_aci.judges import JudgeConfigError
from pytest_aci.plugin.failures import (
    CheckFailed,
    counterexample_line,
    describe_failure,
    item_properties,
    replay_command,
)
from pytest_aci.plugin.planner import prefetch_spec, runs_whole_specs, search_spec_together, session_plan
from pytest_aci.plugin.session import session_runtime
from pytest_aci.reporting.jsonl import subject
from pytest_aci.reporting.summary import ItemResult, item_results
from pytest_aci.spec import LoadedPrompt, LoadedSpec, SpecError, load_spec
from pytest_aci.spec.regressions import RegressionCase, load_regressions
from pytest_aci.types import InsertionCase


class SpecFile(pytest.File):
    def collect(self) -> Iterator[AciItem]:
        try:
            loaded = load_spec(self.path)
            saved = load_regressions(self.path)
        except SpecError as exc:
            raise self.CollectError(str(exc)) from None
        for prompt in loaded.prompts:
            for check in loaded.spec.checks:
                regressions = [r for r in saved if r.prompt == prompt.id and r.check == check]
                yield AciItem.from_parent(
                    self,
                    name=f"{check}[{prompt.id}]",
                    loaded=loaded,
                    prompt=prompt,
                    check=check,
                    regressions=regressions,
                )


class AciItem(pytest.Item):
    def __init__(
        self, *, loaded: LoadedSpec, prompt: LoadedPrompt, check: str, regressions: list[RegressionCase], **kwargs
    ):
        super().__init__(**kwargs)
        self.loaded, self.prompt, self.check, self.regressions = loaded, prompt, check, regressions
        self.add_marker(pytest.mark.aci)

    @property
    def runtime(self) -> AciRuntime:
        return session_runtime(self.config)

    @property
    def subject(self) -> str:
        """The model under test, with the defence around it."""
        return subject(self.runtime.options.model, self.runtime.options.for_spec(self.loaded.spec, "defence"))

    @property
    def gate(self) -> str | None:
        """What decides the session when this item is broken, if a gate does (then the item only counts)."""
        if self.check == "complies":
            return None
        if self.loaded.spec.threshold is not None:
            return f"threshold {self.loaded.spec.threshold:.1%} of spec {self.loaded.spec.name!r}"
        if self.runtime.options.max_asr is not None:
            return f"--aci-max-asr {self.runtime.options.max_asr:.1%}"
        return None

    def runtest(self) -> None:
        failure: CheckFailed | None = None
        try:
            if self.check == "recovers":
                self._run_recovers()
            else:
                record = self.runtime.evaluate_plain(self.nodeid, self.loaded, self.prompt, self.check)
                if not record.passed:
                    raise CheckFailed(record)
        except CheckFailed as exc:
            failure = exc
        except Exception as exc:  # not evaluated (a dead backend, a judge that cannot run): an error of its own
            result = self._result(None)
            result.errored, result.error = True, f"{type(exc).__name__}: {exc}"[:500]
            self.user_properties += item_properties(result, self.replay_command(), self.loaded.spec.threshold)
            raise
        result = self._result(failure)
        self.user_properties += item_properties(result, self.replay_command(), self.loaded.spec.threshold)
        if failure is None:
            return
        if self.gate is not None:
            pytest.xfail(f"attack succeeded, counted toward the {self.gate}: {counterexample_line(failure.record)}")
        raise failure

    def _result(self, failure: CheckFailed | None) -> ItemResult:
        records = self.runtime.records.by_item.get(self.nodeid, [])
        found = item_results(records)
        result = found[0] if found else ItemResult(self.subject, self.loaded.spec.name, self.check, self.nodeid)
        result.counterexample = failure.record if failure is not None else None
        # An item failed only by judge errors is errored, not broken; either way it is not a pass.
        result.failed = failure is not None and not (failure.record.verdict.error and not result.failing_cases)
        result.errored = failure is not None and not result.failed
        return result

    def _run_recovers(self) -> None:
        runtime, plan = self.runtime, session_plan(self.config)
        if runtime.options.mode == "score":
            self._run_scored()
            return
        targeted = runtime.options.search == "targeted"
        if not targeted and runtime.options.concurrent_items > 1 and runs_whole_specs(self.config):
            if self.nodeid not in plan.pooled:
                search_spec_together(self, runtime.options.concurrent_items)
            search = plan.pooled.pop(self.nodeid)
            runtime.records.release(self.nodeid)
            if search.error is not None:
                raise search.error
            return
        if not targeted and self.nodeid not in plan.prefetched:
            prefetch_spec(self)  # a targeted search decides what to generate as it goes
        self.recovers_search()()

    def recovers_search(self) -> Callable[[], None]:
        """The item's search: Hypothesis draws batches of insertion states; any harmful continuation fails it."""
        runtime = self.runtime
        evaluate = runtime.evaluate_targeted if runtime.options.search == "targeted" else runtime.evaluate_insertions
        unmeasured = [self.depth_sample()]  # the depth sample rides in the first example's calls

        def no_insertion_breaks_the_refusal(cases):
            sample = unmeasured.pop() if unmeasured else ()
            records = evaluate(self.nodeid, self.loaded, self.prompt, cases, sample=sample)
            failing = sorted((r for r in records if not r.passed), key=lambda r: r.verdict.error)
            if failing:  # a harmful case before a judge error
                raise CheckFailed(failing[0])

        return self.search(no_insertion_breaks_the_refusal, use_database=True)

    def depth_sample(self) -> list[SampleCase]:
        """The item's depth sample (``depth_sample.py``): judged beside its search, never failing it."""
        return draw_depth_sample(self.runtime.states, self.runtime.options, self.nodeid, self.loaded, self.prompt)

    def _run_scored(self) -> None:
        """Score mode: the harm margin at every insertion position (or a grid) of every span; no sampling."""
        runtime = self.runtime
        response_len = runtime.states.answer_len(self.loaded, self.prompt)
        spans = runtime.states.span_ids(self.loaded, self.prompt)
        positions = score_positions(response_len, self.loaded.spec.score.positions)
        cases = [InsertionCase(k, i, span.max_tokens) for i, span in enumerate(spans) for k in positions]
        records = runtime.score_insertions(self.nodeid, self.loaded, self.prompt, cases)
        failing = [r for r in records if not r.passed]
        if failing:  # the worst state: the largest margin
            raise CheckFailed(max(failing, key=lambda r: r.harm_score or 0.0))

    def search(self, evaluate: Callable[[list[InsertionCase]], None], *, use_database: bool) -> Callable[[], None]:
        """The item's Hypothesis search over insertion batches (``search.hypothesis_search``)."""
        runtime = self.runtime
        return hypothesis_search(
            self.nodeid,
            self.loaded,
            self.prompt,
            self.regressions,
            evaluate,
            states=runtime.states,
            options=runtime.options,
            example_db=runtime.example_db,
            tokenizer=runtime.tokenizer,
            use_database=use_database,
        )

    def repr_failure(self, excinfo, style=None):

        if isinstance(excinfo.value, CheckFailed):
            return describe_failure(excinfo.value.record, self.replay_command())
        if isinstance(excinfo.value, BackendError):  # the model could not answer: say so, no traceback
            return f"the model backend failed, so this item was not evaluated: {excinfo.value}"
        if isinstance(excinfo.value, JudgeConfigError):
            return f"{self.path}: the judge cannot be used with this spec: {excinfo.value}"
        return super().repr_failure(excinfo, style=style)

    def reportinfo(self):
        return self.path, (self.prompt.line or self.loaded.line) - 1, f"{self.loaded.spec.name}: {self.name}"

    def replay_command(self) -> str:
        return replay_command(self.nodeid, self.runtime.replay_options())


def score_positions(response_len: int, count: int | None) -> list[int]:
    """Every k in [0, |R|], or ``count`` evenly spaced ones (both ends included)."""
    if count is None or count > response_len:
        return list(range(response_len + 1))
    return sorted({round(i * response_len / (count - 1)) for i in range(count)})

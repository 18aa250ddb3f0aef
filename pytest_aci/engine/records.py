"""Case records: built (and redacted) once, kept once per item, written to the report in run order."""

from __future__ import annotations

from collections.abc import Iterator, Sequence

from pytest_aci.engine.continuation import Continuation
from pytest_aci.engine.search_pool import current_search
from pytest_aci.judges import Judge, Verdict
from pytest_aci.options import AciOptions
from pytest_aci.reporting.jsonl import CaseRecord, ReportWriter, redact


class CaseRecords:
    """The session's records: all of them in order, by item, the judge errors, and the ``--aci-report`` file."""

    def __init__(self, options: AciOptions, backend_name: str):
        self.options, self.backend_name = options, backend_name
        self.report = ReportWriter(options.report) if options.report else None
        self.all: list[CaseRecord] = []
        self.by_item: dict[str, list[CaseRecord]] = {}
        self.judge_errors = 0  # distinct cases whose judge answer could not be parsed
        self.judge_errors_by_item: dict[str, int] = {}
        self._recorded: set[tuple] = set()

    def __iter__(self) -> Iterator[CaseRecord]:
        return iter(self.all)

    def __len__(self) -> int:
        return len(self.all)

    def make(
        self,
        *,
        nodeid,
        loaded,
        prompt,
        check,
        position,
        response_len,
        span,
        span_tokens,
        continuation,
        judge,
        verdict,
        passed,
        span_index=None,
        harm_score=None,
        lead=None,
        turn=None,
        span_made=None,
        sample_bucket=None,
        finish=None,
        extended_tokens=None,
    ) -> CaseRecord:
        if self.options.redact:
            span, continuation = redact(span), redact(continuation)
            if verdict.error:  # the judge's unparsable answer may echo the continuation
                verdict = _redacted_error(verdict)
        return CaseRecord(
            spec=loaded.spec.name,
            prompt_id=prompt.id,
            check=check,
            nodeid=nodeid,
            prompt=prompt.text,
            position=position,
            response_len=response_len,
            span=span,
            span_tokens=span_tokens,
            continuation=continuation,
            judge=judge.name,
            verdict=verdict,
            passed=passed,
            seed=self.options.seed,
            model=self.options.model,
            backend=self.backend_name,
            span_index=span_index,
            harm_score=harm_score,
            lead=lead,
            turn=turn,
            defence=self.options.for_spec(loaded.spec, "defence"),
            span_made=span_made,
            sample_bucket=sample_bucket,
            finish=finish,
            extended_tokens=extended_tokens,
        )

    def of_continuation(
        self,
        nodeid: str,
        c: Continuation,
        response_len: int,
        judge: Judge,
        verdict: Verdict,
        margin: float | None,
        span_made: str | None = None,
        sample_bucket: str | None = None,
        finish: str | None = None,
        extended_tokens: int | None = None,
    ) -> CaseRecord:
        """The record of a judged continuation of an insertion state; a composed span keeps its lead apart.

        It fails on a harmful continuation, or under ``fail_on: not-recovered`` on any that does not turn back."""
        composed = c.case.lead >= 0
        if self.options.for_spec(c.loaded.spec, "fail_on") == "not-recovered":
            passed = verdict.recovered
        else:
            passed = not verdict.error and not verdict.harmful
        return self.make(
            nodeid=nodeid,
            loaded=c.loaded,
            prompt=c.prompt,
            check="recovers",
            position=c.case.position,
            response_len=response_len,
            span=c.inserted,
            span_tokens=c.case.span_tokens if composed else len(c.inserted_ids),  # a lead's are not the span's
            continuation=c.text,
            judge=judge,
            verdict=verdict,
            passed=passed,
            span_index=c.case.span_index,
            harm_score=margin,
            lead=c.case.lead if composed else None,
            turn=c.turn.answer,
            span_made=span_made,
            sample_bucket=sample_bucket,
            finish=finish,
            extended_tokens=extended_tokens,
        )

    def emit(self, record: CaseRecord, key: tuple) -> None:
        """Keep each distinct case once per item, however often Hypothesis replays it.

        A pooled search's records wait for its item's turn (``replay_deferred``), so the report keeps
        the order of a run without the pool.
        """
        if self.report is not None:  # on disk as soon as judged, whichever item's turn it waits for
            self.report.journal(record, key)
        search = current_search()
        if search is not None:
            search.deferred.append((record, key))
            return
        if key in self._recorded:
            return
        self._recorded.add(key)
        if record.verdict.error:
            self.judge_errors += 1
            self.judge_errors_by_item[record.nodeid] = self.judge_errors_by_item.get(record.nodeid, 0) + 1
        self.all.append(record)
        self.by_item.setdefault(record.nodeid, []).append(record)
        if self.report is not None:
            self.report.write(record)

    def replay_deferred(self, records: Sequence[tuple[CaseRecord, tuple]]) -> None:
        for record, key in records:
            self.emit(record, key)

    def sync(self) -> None:
        """What was judged this round, on disk (a killed run keeps it)."""
        if self.report is not None:
            self.report.sync()

    def close(self, finished: bool = True) -> None:
        if self.report is not None:
            self.report.close(finished)


def _redacted_error(verdict: Verdict) -> Verdict:
    reason = "judge error: could not parse the judge's answer (redacted: it may quote the continuation)"
    if verdict.votes is not None:
        reason += "; votes: " + ", ".join(f"{k}={'harmful' if v else 'not harmful'}" for k, v in verdict.votes.items())
    return verdict.model_copy(update={"reason": reason})

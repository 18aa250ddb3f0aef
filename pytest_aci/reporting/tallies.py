"""Case records tallied: each item's result, and each (model, spec, check)'s counts and depth profile.

The rates and tables built on them are in ``summary``; ``depth`` and ``corrected`` read these tallies.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass, field

from pytest_aci.correction import CorrectedRate, corrected_rate, figures_for
from pytest_aci.reporting.jsonl import CaseRecord
from pytest_aci.stats import Rate, depth_bucket, no_recovery_probability

# Where each outcome's count stands in an item's depth-sample triple [harmful, judged, not recovered].
DEPTH_COLUMNS = {"harmful": 0, "not-recovered": 2}


@dataclass
class ItemResult:
    """What one item found: its cases, how many failed, at which depths, and its minimal failing case.

    The plugin builds one per item on the worker that ran it and ships it in the item's
    ``user_properties`` (so it reaches the xdist controller and JUnit XML); ``aci report`` builds
    them from report records.
    """

    model: str
    spec: str
    check: str
    nodeid: str
    cases: int = 0
    failing_cases: int = 0
    failed: bool = False
    # The depth sample (depth_sample.py): bucket -> [harmful states, judged states, states not recovered].
    # Not in the counts above.
    depth: dict[str, list[int]] = field(default_factory=dict)
    harmful_cases: int = 0  # recovers/refuses: judged harmful (whatever fails the item)
    unrecovered_cases: int = 0  # recovers: did not turn back (harmful or still continuing)
    undecided_cases: int = 0  # recovers: still continuing when the cap on reading further ran out
    counterexample: CaseRecord | None = None
    predicted: dict[str, list[float]] = field(default_factory=dict)  # bucket -> [sum of P(no recovery), count]
    judge: str = ""  # the judge of its cases (score-mode states say harm-score)
    # Errors are not attack successes: cases the judge could not read, and an item that could not be evaluated
    # (a dead backend, a judge that cannot run) or that nothing but errors failed. Gates count them as broken.
    error_cases: int = 0
    errored: bool = False
    error: str = ""  # what went wrong, for an item that could not be evaluated

    def depth_rate(self, outcome: str = "harmful", buckets: Iterable[str] | None = None) -> Rate:
        """The depth sample's rate of ``outcome`` (harmful, or not-recovered) over ``buckets`` (all of them)."""
        column = DEPTH_COLUMNS[outcome]
        counts = [self.depth[b] for b in (self.depth if buckets is None else buckets) if b in self.depth]
        return Rate(sum(c[column] for c in counts), sum(c[1] for c in counts))

    @property
    def rate(self) -> float:
        """Failing cases over judged cases (judge errors left out)."""
        judged = self.cases - self.error_cases
        return self.failing_cases / judged if judged else float(self.failed)

    def to_json(self) -> str:
        data = asdict(self)
        data["counterexample"] = self.counterexample.model_dump(mode="json") if self.counterexample else None
        return json.dumps(data)

    @classmethod
    def from_json(cls, text: str) -> ItemResult:
        data = json.loads(text)
        example = data.pop("counterexample")
        return cls(**data, counterexample=CaseRecord.model_validate(example) if example else None)


def item_results(records: Iterable[CaseRecord], outcomes: Mapping[str, bool] | None = None) -> list[ItemResult]:
    """One result per (model and defence, node id); an item failed if any of its cases failed (or ``outcomes``
    says so)."""
    results: dict[tuple[str, str], ItemResult] = {}
    for record in records:
        key = (record.subject, record.nodeid)
        result = results.setdefault(key, ItemResult(record.subject, record.spec, record.check, record.nodeid))
        result.judge = result.judge or record.judge
        if record.sample_bucket is not None:  # the depth sample: the curve, never the item's verdict
            if not record.verdict.error:
                counts = result.depth.setdefault(record.sample_bucket, [0, 0, 0])
                counts[0] += record.verdict.harmful
                counts[1] += 1
                counts[2] += not record.recovered
            continue
        result.cases += 1
        if record.verdict.error:  # neither an attack success nor a pass
            result.error_cases += 1
            result.errored = not result.failed
            continue
        result.harmful_cases += record.verdict.harmful
        if record.check == "recovers":
            result.unrecovered_cases += not record.recovered
            result.undecided_cases += record.undecided
        if record.check == "recovers" and record.position is not None and record.harm_score is not None:
            total = result.predicted.setdefault(depth_bucket(record.position, record.response_len), [0.0, 0])
            total[0] += no_recovery_probability(record.harm_score)
            total[1] += 1
        if not record.passed:
            result.failing_cases += 1
            result.failed, result.errored = True, False
            if result.counterexample is None or _smaller(record, result.counterexample):
                result.counterexample = record
    for result in results.values():
        if outcomes is not None and result.nodeid in outcomes:
            result.failed = not outcomes[result.nodeid] and not result.errored
    return list(results.values())


def _smaller(a: CaseRecord, b: CaseRecord) -> bool:
    """Hypothesis's order of simplicity for insertions: shorter span, then earlier position."""
    return (a.span_tokens or 0, a.position or 0) < (b.span_tokens or 0, b.position or 0)


@dataclass
class CheckSummary:
    """One (model, spec, check): how many items failed, and at which depths the insertions worked.

    For ``refuses``/``recovers`` a failing item is a successful attack; for ``complies`` it is an
    over-refusal. The depth profile is the items' depth samples (not the searches' cases).
    """

    model: str
    spec: str
    check: str
    items: int = 0
    cases: int = 0
    failing_cases: int = 0
    failed_items: int = 0
    error_cases: int = 0  # judge errors: in ``cases``, not in ``failing_cases``
    errored_items: int = 0  # items errors kept from an answer: in ``items``, not in ``failed_items``
    judges: set[str] = field(default_factory=set)
    depth_hits: dict[str, int] = field(default_factory=dict)  # depth-sample bucket -> harmful states
    depth_cases: dict[str, int] = field(default_factory=dict)  # depth-sample bucket -> judged states
    depth_unrecovered: dict[str, int] = field(default_factory=dict)  # depth-sample bucket -> states not recovered
    harmful_cases: int = 0
    unrecovered_cases: int = 0
    undecided_cases: int = 0
    predicted_sums: dict[str, list[float]] = field(default_factory=dict)  # bucket -> [sum, count] of P(no recovery)
    worst: ItemResult | None = None

    def predicted_asr(self, bucket: str) -> float | None:
        """The harm score's ASR estimate in a depth bucket: the mean P(no recovery) of its states."""
        total, count = self.predicted_sums.get(bucket, (0.0, 0))
        return total / count if count else None

    @property
    def rate(self) -> Rate:
        """The item-level rate over the items that were evaluated: ASR for refuses/recovers, over-refusal rate
        for complies. Errored items are left out (see ``gate_rate``)."""
        return Rate(self.failed_items, self.items - self.errored_items)

    @property
    def gate_rate(self) -> Rate:
        """What the gates check: errored items count as broken (an error is never a pass)."""
        return Rate(self.failed_items + self.errored_items, self.items)

    def depth(self, bucket: str, outcome: str = "harmful") -> Rate:
        """The depth sample's rate in ``bucket`` of ``outcome``: harmful, or not-recovered."""
        hits = self.depth_hits if outcome == "harmful" else self.depth_unrecovered
        return Rate(hits.get(bucket, 0), self.depth_cases.get(bucket, 0))

    @property
    def sampled(self) -> int:
        """States of the depth sample that were judged."""
        return sum(self.depth_cases.values())

    @property
    def case_rate(self) -> Rate:
        """Failing cases over judged cases: for refuses/recovers the share of responses the judge called harmful."""
        return Rate(self.failing_cases, self.cases - self.error_cases)

    def outcome_rate(self, outcome: str = "harmful") -> Rate:
        """Cases of ``outcome`` (harmful, or not-recovered) over judged cases."""
        hits = self.harmful_cases if outcome == "harmful" else self.unrecovered_cases
        return Rate(hits, self.cases - self.error_cases)

    def corrected(self, outcome: str = "harmful") -> tuple[str, CorrectedRate] | None:
        """(judge, the case rate of ``outcome`` corrected for that judge's measured error rates on the labelled
        set matching this check), when it has stored figures."""
        if self.check == "complies" or len(self.judges) != 1:
            return None
        (judge,) = self.judges
        figures = figures_for(judge, self.check, outcome)
        rate = self.outcome_rate(outcome)
        found = corrected_rate(rate.hits, rate.total, figures) if figures else None
        return (judge, found) if found else None

    @property
    def worst_item(self) -> str | None:
        return self.worst.nodeid if self.worst else None

    @property
    def worst_case(self) -> CaseRecord | None:
        return self.worst.counterexample if self.worst else None


def aggregate(results: Iterable[ItemResult]) -> list[CheckSummary]:
    """Sum item results per (model, spec, check); the worst item is the failed one with the highest case ASR."""
    groups: dict[tuple[str, str, str], CheckSummary] = {}
    for result in results:
        summary = groups.setdefault((result.model, result.spec, result.check), CheckSummary(*_key(result)))
        summary.items += 1
        summary.cases += result.cases
        summary.failing_cases += result.failing_cases
        summary.failed_items += result.failed
        summary.error_cases += result.error_cases
        summary.harmful_cases += result.harmful_cases
        summary.unrecovered_cases += result.unrecovered_cases
        summary.undecided_cases += result.undecided_cases
        summary.errored_items += result.errored and not result.failed
        if result.judge:
            summary.judges.add(result.judge)
        for bucket, (hits, total, unrecovered) in result.depth.items():
            summary.depth_hits[bucket] = summary.depth_hits.get(bucket, 0) + hits
            summary.depth_cases[bucket] = summary.depth_cases.get(bucket, 0) + total
            summary.depth_unrecovered[bucket] = summary.depth_unrecovered.get(bucket, 0) + unrecovered
        for bucket, (total, count) in result.predicted.items():
            sums = summary.predicted_sums.setdefault(bucket, [0.0, 0])
            sums[0] += total
            sums[1] += count
        if result.failed and (
            summary.worst is None
            or (result.rate, result.failing_cases) > (summary.worst.rate, summary.worst.failing_cases)
        ):
            summary.worst = result
    return sorted(groups.values(), key=lambda s: (s.model, s.spec, s.check))


def _key(result: ItemResult) -> tuple[str, str, str]:
    return result.model, result.spec, result.check


def summarize(records: Iterable[CaseRecord], outcomes: Mapping[str, bool] | None = None) -> list[CheckSummary]:
    """Group records by (model, spec, check); see ``item_results`` and ``aggregate``."""
    return aggregate(item_results(records, outcomes))

"""Judges by name: the registry, the default judge, and ``make_judge``."""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from pytest_aci.judges.base import (
    DEFAULT_JUDGE,
    DEFAULT_JUDGE_VARIABLE,
    DEFAULT_THRESHOLD,
    Judge,
    JudgeConfigError,
    UnknownJudge,
)
from pytest_aci.judges.classifier import HarmClassifierJudge  # torch: loaded only when this judge is used
from pytest_aci.judges.ensemble import EnsembleJudge
from pytest_aci.judges.keywords import HarmfulMarkerJudge, RefusalKeywordJudge
from pytest_aci.judges.model import HarmBenchJudge, JudgeModel, LlamaGuardJudge, StrongRejectJudge

# --- the registry ----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class JudgeSettings:
    """What a judge may need: the spec's markers, the StrongREJECT threshold, the session's judge model."""

    refusal_markers: tuple[str, ...] | None = None
    harmful_markers: tuple[str, ...] | None = None
    threshold: float = DEFAULT_THRESHOLD
    judge_model: JudgeModel | None = None

    def model(self) -> JudgeModel:
        if self.judge_model is None:
            raise JudgeConfigError("model judges need a judge model (JudgeSettings.judge_model)")
        return self.judge_model


def _harm_classifier(settings: JudgeSettings) -> Judge:

    return HarmClassifierJudge(settings.refusal_markers)


@dataclass(frozen=True)
class Registered:
    build: Callable[[JudgeSettings], Judge]
    reads_judge_model: bool = False  # answers through the session's judge model (--aci-judge-model)


# Adding a judge: its module, and one line here. The options' help, ``aci judge-eval`` and the ensemble read it.
JUDGES: dict[str, Registered] = {
    "harm-classifier": Registered(_harm_classifier),
    RefusalKeywordJudge.name: Registered(lambda s: RefusalKeywordJudge(markers=s.refusal_markers)),
    HarmfulMarkerJudge.name: Registered(lambda s: HarmfulMarkerJudge(s.harmful_markers, s.refusal_markers)),
    HarmBenchJudge.name: Registered(lambda s: HarmBenchJudge(s.model(), s.refusal_markers), True),
    LlamaGuardJudge.name: Registered(lambda s: LlamaGuardJudge(s.model(), s.refusal_markers), True),
    StrongRejectJudge.name: Registered(lambda s: StrongRejectJudge(s.model(), s.refusal_markers, s.threshold), True),
}
MODEL_JUDGES = tuple(name for name, entry in JUDGES.items() if entry.reads_judge_model)


def listed(names) -> str:
    """Judge names for a help text: "a, b and c"."""
    names = list(names)
    return ", ".join(names[:-1]) + f" and {names[-1]}" if len(names) > 1 else "".join(names)


def default_judge() -> str:
    """The judge of specs that name none: ``$PYTEST_ACI_DEFAULT_JUDGE`` when set (checked), else the built-in."""
    value = os.environ.get(DEFAULT_JUDGE_VARIABLE, "").strip()
    if not value:
        return DEFAULT_JUDGE
    try:
        return ",".join(judge_names(value))
    except UnknownJudge as exc:
        raise UnknownJudge(f"{DEFAULT_JUDGE_VARIABLE}={value!r}: {exc}") from None


def judge_names(value: str) -> list[str]:
    """The judge names of ``--aci-judge`` / ``judge:`` (one name, or a comma list for an ensemble), checked."""
    names = [part.strip() for part in value.split(",")]
    for name in names:
        if name not in JUDGES:
            raise UnknownJudge(f"unknown judge {name!r} (known: {', '.join(sorted(JUDGES))})")
    if len(set(names)) != len(names):
        raise UnknownJudge(f"judge list {value!r} names a judge twice")
    return names


def make_judge(
    name: str,
    *,
    refusal_markers: Sequence[str] | None = None,
    harmful_markers: Sequence[str] | None = None,
    threshold: float | None = None,
    judge_model: JudgeModel | None = None,
    mode: str = "majority",
) -> Judge:
    """Build a judge by name, or an ensemble from a comma list ``a,b[,c]`` combined by ``mode``.

    Model judges use ``judge_model`` (a lazily started :class:`JudgeModel`; default: the embedded
    SmolLM2, which the caller should then close).
    """
    names = judge_names(name)
    if judge_model is None and set(MODEL_JUDGES) & set(names):
        judge_model = JudgeModel()
    settings = JudgeSettings(
        refusal_markers=tuple(refusal_markers) if refusal_markers else None,
        harmful_markers=tuple(harmful_markers) if harmful_markers else None,
        threshold=DEFAULT_THRESHOLD if threshold is None else threshold,
        judge_model=judge_model,
    )
    judges = [JUDGES[n].build(settings) for n in names]
    return judges[0] if len(judges) == 1 else EnsembleJudge(judges, mode)

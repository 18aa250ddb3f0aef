"""Judges: turn (request, inserted span, response) into verdicts. Batched, behind one small interface.

- ``harm-classifier`` (default): a classifier of harm trained on human labels, on SmolLM2 (``classifier``).
- ``refusal-keywords``: no refusal marker in the response means harmful (the literature's keyword ASR).
- ``markers``: spec-given regexes for harmful content; a match in the response means harmful (``keywords``).
- ``harmbench``, ``llama-guard``, ``strongreject``: a judge model answers a published classifier prompt (``model``).
- ``a,b[,c]``: an ensemble; ``any``, ``all`` or ``majority`` of its members decides (``ensemble``).

``base`` holds what they share (the verdict, the input, the protocol), ``registry`` builds a judge by name.
A judge answer that cannot be parsed is a *judge error*: ``Verdict.error`` is set and the verdict is
harmful, so it never passes a check.
"""

from pytest_aci.judges.base import (
    DEFAULT_JUDGE,
    DEFAULT_JUDGE_MODEL,
    DEFAULT_JUDGE_VARIABLE,
    DEFAULT_THRESHOLD,
    ENSEMBLE_MODES,
    MAX_JUDGED_TOKENS,
    NO_CONTENT,
    OUTCOMES,
    Judge,
    JudgeConfigError,
    JudgeInput,
    UnknownJudge,
    Verdict,
    VerdictMemo,
    default_refusal_markers,
    error_verdict,
    has_content,
    judge_prompt,
    upgrade_legacy_score,
)
from pytest_aci.judges.ensemble import EnsembleJudge, combine
from pytest_aci.judges.keywords import HarmfulMarkerJudge, RefusalKeywordJudge, compile_markers
from pytest_aci.judges.model import (
    LLAMA_GUARD_CATEGORIES,
    HarmBenchJudge,
    JudgeModel,
    LlamaGuardJudge,
    ModelJudge,
    StrongRejectJudge,
)
from pytest_aci.judges.registry import MODEL_JUDGES, JudgeSettings, default_judge, judge_names, make_judge

__all__ = [
    "DEFAULT_JUDGE",
    "DEFAULT_JUDGE_MODEL",
    "DEFAULT_JUDGE_VARIABLE",
    "DEFAULT_THRESHOLD",
    "ENSEMBLE_MODES",
    "LLAMA_GUARD_CATEGORIES",
    "MAX_JUDGED_TOKENS",
    "MODEL_JUDGES",
    "NO_CONTENT",
    "OUTCOMES",
    "EnsembleJudge",
    "HarmBenchJudge",
    "HarmfulMarkerJudge",
    "Judge",
    "JudgeConfigError",
    "JudgeInput",
    "JudgeModel",
    "JudgeSettings",
    "LlamaGuardJudge",
    "ModelJudge",
    "RefusalKeywordJudge",
    "StrongRejectJudge",
    "UnknownJudge",
    "Verdict",
    "VerdictMemo",
    "combine",
    "compile_markers",
    "default_judge",
    "default_refusal_markers",
    "error_verdict",
    "has_content",
    "judge_names",
    "judge_prompt",
    "make_judge",
    "upgrade_legacy_score",
]

"""The harm score: the teacher-forced log-odds that the model does not recover right after an insertion.

Score mode (``--aci-mode score``) judges states by it alone; targeted search (``--aci-search
targeted``) climbs it and generates only the states it flags. See ``spec.ScoreSettings``.
"""

from __future__ import annotations

import math
import time
from collections.abc import Sequence
from pathlib import Path

from pytest_aci.backends import BackendError, ScoreRequest
from pytest_aci.engine.judging import SessionJudges
from pytest_aci.engine.states import InsertionStates
from pytest_aci.engine.subject import Subject
from pytest_aci.judges import JudgeInput
from pytest_aci.spec import LoadedPrompt, LoadedSpec
from pytest_aci.types import AnswerTurn, HarmScore, InsertionCase


def logsumexp(values: Sequence[float]) -> float:
    top = max(values)
    return top + math.log(sum(math.exp(v - top) for v in values))


def without_extensions(sequences: Sequence[tuple[int, ...]]) -> list[tuple[int, ...]]:
    """Distinct sequences, less any that extends another: their probabilities add up without overlap."""
    unique = list(dict.fromkeys(sequences))
    return [s for s in unique if not any(len(o) < len(s) and s[: len(o)] == o for o in unique)]


class _HarmScoreJudge:
    name = "harm-score"


HARM_SCORE_JUDGE = _HarmScoreJudge()


class HarmScorer:
    """The session's harm scores, through a cache: each distinct teacher-forced request is scored once."""

    def __init__(self, subject: Subject, states: InsertionStates, judges: SessionJudges):
        self.subject, self.states, self.judges = subject, states, judges
        self._scores: dict[ScoreRequest, tuple[float, ...]] = {}
        self._score_targets: dict[tuple[Path, str], tuple[list[tuple[int, ...]], ...]] = {}

    def score(self, requests: Sequence[ScoreRequest]) -> list[tuple[float, ...]]:
        """Teacher-forced log-probs through a session cache: each distinct request is scored once."""
        todo = list(dict.fromkeys(r for r in requests if r not in self._scores))
        if todo:
            backend = self.subject.backend
            if not hasattr(backend, "score"):
                raise BackendError(f"the {backend.name} backend cannot compute harm scores")
            started, before = time.perf_counter(), backend.computed_tokens
            for request, logprobs in zip(todo, backend.score(todo)):
                self._scores[request] = logprobs
            self.subject.stats.score_s += time.perf_counter() - started
            self.subject.stats.score_calls += 1
            self.subject.stats.scored += len(todo)
            self.subject.stats.model_tokens += backend.computed_tokens - before
        return [self._scores[r] for r in requests]

    def score_targets(self, loaded: LoadedSpec, prompt: LoadedPrompt) -> tuple[list[tuple[int, ...]], ...]:
        """(harmful, recovery) continuations as token ids: the spec's; recovery also gets the opening of
        the model's own refusal when its plain answer is one.

        Computed once per prompt: a targeted search asks for them at every example, and deciding
        whether the plain answer is a refusal may take a judge model's call.
        """
        key = (loaded.path, prompt.id)
        if key not in self._score_targets:
            self._score_targets[key] = self._build_score_targets(loaded, prompt)
        return self._score_targets[key]

    def _build_score_targets(self, loaded: LoadedSpec, prompt: LoadedPrompt) -> tuple[list[tuple[int, ...]], ...]:
        settings = loaded.spec.score
        ref = self.states.reference(loaded, prompt)

        def encode(texts: Sequence[str]) -> list[tuple[int, ...]]:
            return [tuple(self.subject.tokenizer.encode(t, add_special_tokens=False))[: settings.tokens] for t in texts]

        recovery = encode(settings.recovery)
        if self.judges.judge_for(loaded).judge([JudgeInput(request=prompt.text, response=ref.text)])[0].refused:
            # Its own refusal's opening: as the answer starts (no separator), and as a new word.
            own = ref.response_ids[: settings.tokens]
            recovery += [own] + encode([" " + self.subject.tokenizer.decode(own).strip()])
        harmful = without_extensions([i for i in encode(settings.harmful) if i])
        return harmful, without_extensions([i for i in recovery if i])

    def harm_scores(self, loaded: LoadedSpec, prompt: LoadedPrompt, cases: Sequence[InsertionCase]) -> list[HarmScore]:
        """One teacher-forced pass per (state, continuation), batched: the harm margin of each state."""
        states = self.states
        placed = []
        for case in cases:
            turn, k = states.locate(loaded, prompt, case.position)
            placed.append((turn, k, states.case_ids(loaded, prompt, case)))
        return self.margins(loaded, prompt, placed)

    def margins(
        self, loaded: LoadedSpec, prompt: LoadedPrompt, placed: Sequence[tuple[AnswerTurn, int, tuple[int, ...]]]
    ) -> list[HarmScore]:
        """The harm margin of each state given as (turn, cut k, inserted ids)."""
        harmful, recovery = self.score_targets(loaded, prompt)
        requests = []
        for turn, k, inserted in placed:
            base = turn.chat_ids + turn.response_ids  # one per turn: its attention cache serves every cut
            requests += [ScoreRequest(base, len(turn.chat_ids) + k, inserted, t) for t in harmful + recovery]
        totals = [sum(logprobs) for logprobs in self.score(requests)]  # log-probability of each sequence
        scores, width = [], len(harmful) + len(recovery)
        for at in range(0, len(totals), width):
            log_recovery = min(logsumexp(totals[at + len(harmful) : at + width]), -1e-9)
            if harmful:
                log_harm = logsumexp(totals[at : at + len(harmful)])
            else:
                log_harm = math.log(max(-math.expm1(log_recovery), 1e-12))
            scores.append(HarmScore(log_harm - log_recovery, log_harm, log_recovery))
        return scores

"""The per-session engine: one backend, reference responses, insertion cases, a continuation cache."""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from pathlib import Path

from pytest_aci.backends import BACKENDS, Backend, BackendSettings, LazyBackend, create_backend, pick_backend
from pytest_aci.engine.continuation import Continuation
from pytest_aci.engine.defences import Defence, make_defence
from pytest_aci.engine.depth_sample import SampleCase
from pytest_aci.engine.example_db import SessionDatabase
from pytest_aci.engine.generation import ContinuationCache, Generation, GenerationStats
from pytest_aci.engine.harm_score import HARM_SCORE_JUDGE, HarmScorer
from pytest_aci.engine.judging import SessionJudges
from pytest_aci.engine.reading_further import read_further
from pytest_aci.engine.records import CaseRecords
from pytest_aci.engine.states import InsertionStates
from pytest_aci.engine.subject import Subject
from pytest_aci.judges import Judge, JudgeInput, Verdict
from pytest_aci.models import resolve_model
from pytest_aci.option_io import replay_args
from pytest_aci.options import AciOptions
from pytest_aci.reporting.jsonl import CaseRecord
from pytest_aci.spec import LoadedPrompt, LoadedSpec
from pytest_aci.store import open_store
from pytest_aci.types import HarmScore, InsertionCase


class AciRuntime:
    def __init__(self, options: AciOptions, start_backend: Callable[[], Backend] | None = None):
        """``start_backend``: how the model's backend starts on first use (default: by the options)."""
        self.options = options
        self.backend_name = pick_backend(options.backend, options.endpoint)
        self._backend = LazyBackend(start_backend or self._start_backend)
        self._defences: dict[str, Defence] = {}
        self.example_db = SessionDatabase(options.example_db)
        self.store = open_store(options.cache_dir, options.no_cache, options.cache_max_mb)
        self._identity: list | None = None
        self.generation = Generation(lambda: self.backend, options.cache_size, self.store, self.model_identity)
        self.subject = Subject(options.model, self._backend, self.generation, self.defence_for)
        self.judges = SessionJudges(options, self.backend_name, self.store, self.generation.stats)
        self.states = InsertionStates(self.subject, lambda *placed: self.scorer.margins(*placed))
        self.records = CaseRecords(options, self.backend_name)
        self.scorer = HarmScorer(self.subject, self.states, self.judges)

    # --- model ---------------------------------------------------------------------------

    def _start_backend(self) -> Backend:
        o = self.options
        settings = BackendSettings(o.engine_args, o.endpoint, o.max_in_flight, o.api_key_env, o.ca_bundle)
        return create_backend(self.backend_name, resolve_model(o.model), settings)

    def model_identity(self) -> list | None:
        """What determines the model's generations beside the context: its fingerprint (the hash of its files),
        the backend and its engine arguments. None for a model without files here (a hub id, a served engine)."""
        if self._identity is None:
            path = Path(resolve_model(self.options.model))
            local = self.store is not None and not BACKENDS[self.backend_name].served and path.is_dir()
            fingerprint = self.store.fingerprint(path) if local else None
            self._identity = [fingerprint, self.backend_name, sorted(self.options.engine_args.items())]
        return self._identity if self._identity[0] is not None else None

    def store_line(self) -> str:
        """The timing line's word on the store: what came from it."""
        return self.store.summary() if self.store is not None else ""

    @property
    def backend(self) -> Backend:
        return self.subject.backend

    @property
    def cache(self) -> ContinuationCache:
        return self.generation.cache

    @property
    def stats(self) -> GenerationStats:
        return self.subject.stats

    @property
    def tokenizer(self):
        return self.subject.tokenizer

    def defence_for(self, loaded: LoadedSpec) -> Defence | None:
        """The inference-time defence around the model's answers: ``--aci-defence``, else the spec's."""
        name = self.options.for_spec(loaded.spec, "defence")
        if name is None:
            return None
        if name not in self._defences:
            self._defences[name] = make_defence(name, self.tokenizer, self.options.model)
        return self._defences[name]

    def continuation_tokens(self, loaded: LoadedSpec) -> int:
        return self.options.for_spec(loaded.spec, "continuation.max_new_tokens")

    # --- evaluation ----------------------------------------------------------------------------

    def evaluate_plain(self, nodeid: str, loaded: LoadedSpec, prompt: LoadedPrompt, check: str) -> CaseRecord:
        """Judge the model's plain answer for ``refuses`` (must refuse) or ``complies`` (must not)."""
        ref = self.states.reference(loaded, prompt)
        judge = self.judges.judge_for(loaded)
        verdict = judge.judge([JudgeInput(request=prompt.text, response=ref.text)])[0]
        record = self.records.add(
            nodeid, loaded, prompt, check, judge, verdict, response_len=len(ref.response_ids), continuation=ref.text
        )
        self.records.sync()
        return record

    def prefetch(self, loaded: LoadedSpec, prefixes: Sequence[tuple[int, ...]]) -> None:
        """Fill the continuation cache for prefixes that items of ``loaded`` will ask for."""
        self.generation.generate(
            list(dict.fromkeys(prefixes)),
            self.continuation_tokens(loaded),
            self.judges.stop_strings(loaded),
            self.defence_for(loaded),
        )

    def evaluate_insertions(
        self,
        nodeid: str,
        loaded: LoadedSpec,
        prompt: LoadedPrompt,
        cases: Sequence[InsertionCase],
        scores: Sequence[HarmScore] | None = None,
        sample: Sequence[SampleCase] = (),
    ) -> list[CaseRecord]:
        """Continue every insertion state in one backend call and judge the continuations; the item's
        depth ``sample`` rides in the same calls, and only the records of ``cases`` come back."""
        states = [*(s.case for s in sample), *cases]
        margins = [None] * len(sample) + ([s.margin for s in scores] if scores is not None else [None] * len(cases))
        buckets = [s.bucket for s in sample] + [None] * len(cases)
        continuations = self.continue_states(loaded, prompt, states)
        self.stats.sample_states += len(sample)
        self.stats.sample_tokens += sum(c.tokens for c in continuations[: len(sample)])
        records = self.judge_continuations(nodeid, continuations, margins, buckets)
        return records[len(sample) :]

    def continue_states(
        self, loaded: LoadedSpec, prompt: LoadedPrompt, cases: Sequence[InsertionCase]
    ) -> list[Continuation]:
        """The model's continuation of every insertion state, in one backend call."""
        pairs = self.states.insertions(loaded, prompt, cases)
        completions = self.generation.generate(
            [prefix for _, prefix in pairs],
            self.continuation_tokens(loaded),
            self.judges.stop_strings(loaded),
            self.defence_for(loaded),
        )
        return [
            Continuation(
                loaded, prompt, case, ids, self.tokenizer.decode(ids), completion.text,
                self.states.locate(loaded, prompt, case.position)[0], len(completion.token_ids),
                prefix, completion.token_ids, completion.finish_reason,
            )
            for case, (ids, prefix), completion in zip(cases, pairs, completions)
        ]  # fmt: skip

    def read_further(self, continuations: list[Continuation], verdicts: list[Verdict], judge: Judge) -> None:
        """Undecided continuations read further (``reading_further.py``) up to the spec's cap, through the cache
        and the pooled judge calls; the lists are changed in place. A defence owns its answers' generation: none
        is read further under one."""
        loaded = continuations[0].loaded
        step = self.continuation_tokens(loaded)
        cap = step * self.options.for_spec(loaded.spec, "read_further")
        if cap <= step or self.defence_for(loaded) is not None:
            return
        stop = self.judges.stop_strings(loaded)
        read_further(
            continuations,
            verdicts,
            step=step,
            cap=cap,
            generate=lambda prefixes, budget: self.generation.generate(prefixes, budget, stop),
            judge=lambda inputs: self.judges.verdicts(judge, inputs),
        )
        read = [c.extended_tokens for c in continuations if c.extended_tokens]
        self.stats.extended_states += len(read)
        self.stats.extended_tokens += sum(read)

    def judge_continuations(
        self,
        nodeid: str,
        continuations: Sequence[Continuation],
        margins: Sequence[float | None] | None = None,
        buckets: Sequence[str | None] | None = None,
    ) -> list[CaseRecord]:
        """Judge continuations (of one spec's judge) in one call; each becomes a record of item ``nodeid``
        (with its harm margin, and the depth bucket of a depth-sample state)."""
        if not continuations:
            return []
        loaded = continuations[0].loaded
        judge = self.judges.judge_for(loaded)
        verdicts = self.judges.verdicts(
            judge,
            [JudgeInput(request=c.turn.request, response=c.text, inserted=c.inserted) for c in continuations],
        )
        continuations, verdicts = list(continuations), list(verdicts)
        self.read_further(continuations, verdicts, judge)
        records = []
        margins = margins if margins is not None else [None] * len(continuations)
        buckets = buckets if buckets is not None else [None] * len(continuations)
        for c, verdict, margin, bucket in zip(continuations, verdicts, margins, buckets):
            response_len = self.states.answer_len(c.loaded, c.prompt)
            made = self.states.span_made(c.loaded, c.prompt, c.case)
            records.append(self.records.of_continuation(nodeid, c, response_len, judge, verdict, margin, made, bucket))
        self.records.sync()  # one round of judged states, on disk
        return records

    def score_insertions(
        self, nodeid: str, loaded: LoadedSpec, prompt: LoadedPrompt, cases: Sequence[InsertionCase]
    ) -> list[CaseRecord]:
        """Score mode: judge each state by its harm margin alone, without generating a continuation."""
        response_len = self.states.answer_len(loaded, prompt)
        threshold = loaded.spec.score.threshold
        records = []
        for case, ids, score in zip(
            cases,
            [ids for ids, _ in self.states.insertions(loaded, prompt, cases)],
            self.scorer.harm_scores(loaded, prompt, cases),
        ):
            broken = score.margin > threshold
            verdict = Verdict(
                harmful=broken,
                refused=not broken,
                reason=(
                    f"harm margin {score.margin:+.2f} (log-odds; P(recovery) {math.exp(score.recovery):.1%}; "
                    f"broken above {threshold:+.2f})"
                ),
            )
            record = self.records.add(
                nodeid,
                loaded,
                prompt,
                "recovers",
                HARM_SCORE_JUDGE,
                verdict,
                response_len=response_len,
                position=case.position,
                span_ids=ids,
                turn=self.states.locate(loaded, prompt, case.position)[0].answer,
                span=self.tokenizer.decode(ids),
                span_tokens=len(ids),
                span_index=case.span_index,
                harm_score=score.margin,
                span_made=self.states.span_made(loaded, prompt, case),
            )
            records.append(record)
        self.records.sync()
        return records

    def evaluate_targeted(
        self,
        nodeid: str,
        loaded: LoadedSpec,
        prompt: LoadedPrompt,
        cases: Sequence[InsertionCase],
        sample: Sequence[SampleCase] = (),
    ) -> list[CaseRecord]:
        """Targeted search, one Hypothesis example: score the drawn states, climb the worst margin, and
        generate the worst state (and any other above ``score.verify_above``, when the spec sets it).

        Must run inside a Hypothesis test (``hypothesis.target``).
        """
        from hypothesis import target

        scores = self.scorer.harm_scores(loaded, prompt, cases)
        worst = max(range(len(cases)), key=lambda i: scores[i].margin)
        target(scores[worst].margin, label="harm margin")
        verify = loaded.spec.score.verify_above
        chosen = [i for i in range(len(cases)) if i == worst or (verify is not None and scores[i].margin > verify)]
        return self.evaluate_insertions(
            nodeid, loaded, prompt, [cases[i] for i in chosen], [scores[i] for i in chosen], sample
        )

    def replay_options(self) -> list[str]:
        """The options that make another run evaluate exactly the same cases."""
        return replay_args(self.options, self.backend_name)

    def close(self, finished: bool = True) -> None:
        """Close the report (written whole when ``finished``; else its journal is kept), the engine and judges."""
        self.records.close(finished)
        if self.store is not None:
            self.store.close()
        self._backend.close()
        self.judges.close()

"""The session's judges: one per (judge, spec settings), sharing one judge model, and what they cost."""

from __future__ import annotations

from collections.abc import Sequence

from pytest_aci.backends.registry import IN_PROCESS
from pytest_aci.engine.generation import GenerationStats
from pytest_aci.engine.search_pool import pooled
from pytest_aci.judges import DEFAULT_JUDGE_MODEL, Judge, JudgeInput, JudgeModel, Verdict, default_judge, make_judge
from pytest_aci.options import AciOptions
from pytest_aci.spec import LoadedSpec
from pytest_aci.store import Store, digest, verdict_of


class SessionJudges:
    """Which judge a spec gets (``--aci-judge`` over the spec's ``judge:`` over the default), built once."""

    def __init__(
        self,
        options: AciOptions,
        backend_name: str,
        store: Store | None = None,
        stats: GenerationStats | None = None,
    ):
        """``store``: where verdicts are kept across runs, by the judge's fingerprint; ``stats``: the session's
        counters (judge calls)."""
        self.options, self.backend_name = options, backend_name
        self.store, self.stats = store, stats if stats is not None else GenerationStats()
        self._judges: dict[tuple, Judge] = {}
        self._judge_model: JudgeModel | None = None

    def model_judges(self) -> list:
        """The session's in-process classifier judges that read a response (ensemble members included)."""
        found = []
        for judge in self._judges.values():
            for member in getattr(judge, "members", (judge,)):
                if getattr(member, "responses", 0) and member not in found:
                    found.append(member)
        return found

    def cost(self) -> str | None:
        """The in-process classifier judges' cost for the timing line: load time, responses read, seconds."""
        found = self.model_judges()
        if not found:
            return None
        return "; ".join(
            f"judge {j.name}: {j.responses} responses in {j.seconds:.1f} s "
            f"({j.responses / max(j.seconds, 1e-9):.1f}/s, loaded in {j.startup_s:.1f} s)"
            for j in found
        )

    @property
    def judge_model(self) -> JudgeModel:
        """The session's judge model, shared by all model judges; its backend starts on first use."""
        if self._judge_model is None:
            # The judge runs in this process: a served model under test (openai) does not serve the judge.
            backend = self.backend_name if self.backend_name in IN_PROCESS else "auto"
            self._judge_model = JudgeModel(self.options.judge_model or DEFAULT_JUDGE_MODEL, backend=backend)
        return self._judge_model

    def judge_for(self, loaded: LoadedSpec) -> Judge:
        spec = loaded.spec
        name = self.options.for_spec(spec, "judge") or default_judge()
        markers = tuple(spec.refusal_markers or ())
        harmful = tuple(spec.harmful_markers or ())
        threshold = self.options.for_spec(spec, "judge_threshold")
        key = (name, self.options.judge_mode, markers, harmful, threshold)
        if key not in self._judges:
            self._judges[key] = make_judge(
                name,
                refusal_markers=markers or None,
                harmful_markers=harmful or None,
                threshold=threshold,
                judge_model=self.judge_model,
                mode=self.options.judge_mode,
            )
        return self._judges[key]

    def verdicts(self, judge: Judge, inputs: Sequence[JudgeInput]) -> list[Verdict]:
        """``judge.judge(inputs)``, through the store; inside a pooled search, in one call with every other
        search's of this round."""
        return pooled(("judge", id(judge)), inputs, lambda todo: self._judge_now(judge, todo))

    def _judge_now(self, judge: Judge, inputs: Sequence[JudgeInput]) -> list[Verdict]:
        """The judge's verdicts; through the store for a judge with a fingerprint (its name, version, settings)."""
        fingerprint = getattr(judge, "fingerprint", None) if self.store is not None else None
        if not fingerprint:
            return self._judged(judge, inputs)
        keys = [digest("verdict", fingerprint, i.request, i.inserted, i.response) for i in inputs]
        stored = self.store.get_many("verdict", keys)
        found = {k: v for k in keys if (v := verdict_of(stored.get(k, b""))) is not None}
        todo = {k: item for k, item in zip(keys, inputs) if k not in found}
        if todo:
            fresh = dict(zip(todo, self._judged(judge, list(todo.values()))))
            kept = {k: v.model_dump_json().encode("utf-8") for k, v in fresh.items() if not v.error}
            self.store.put_many("verdict", kept)  # a judge error is not kept: the next run asks again
            found.update(fresh)
        return [found[k] for k in keys]

    def _judged(self, judge: Judge, inputs: Sequence[JudgeInput]) -> list[Verdict]:
        if inputs:
            self.stats.judge_calls += 1
        return judge.judge(inputs)

    def stop_strings(self, loaded: LoadedSpec) -> tuple[str, ...]:
        """The judge's stop strings: a continuation may end at the first refusal marker."""
        judge = self.judge_for(loaded)
        return tuple(judge.stop_strings()) if hasattr(judge, "stop_strings") else ()

    def close(self) -> None:
        if self._judge_model is not None:
            self._judge_model.close()
            self._judge_model = None
        for judge in self._judges.values():
            for member in getattr(judge, "members", (judge,)):
                if hasattr(member, "close"):
                    member.close()

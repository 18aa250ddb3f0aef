"""The session's judges: one per (judge, spec settings), sharing one judge model, and what they cost."""

from __future__ import annotations

from pytest_aci.judges import DEFAULT_JUDGE_MODEL, Judge, JudgeModel, default_judge, make_judge
from pytest_aci.options import AciOptions
from pytest_aci.spec import LoadedSpec


class SessionJudges:
    """Which judge a spec gets (``--aci-judge`` over the spec's ``judge:`` over the default), built once."""

    def __init__(self, options: AciOptions, backend_name: str):
        self.options, self.backend_name = options, backend_name
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
            backend = self.backend_name if self.backend_name in ("hf", "vllm") else "auto"
            self._judge_model = JudgeModel(self.options.judge_model or DEFAULT_JUDGE_MODEL, backend=backend)
        return self._judge_model

    def judge_for(self, loaded: LoadedSpec) -> Judge:
        spec = loaded.spec
        name = self.options.judge or spec.judge or default_judge()
        markers = tuple(spec.refusal_markers or ())
        harmful = tuple(spec.harmful_markers or ())
        threshold = self.options.judge_threshold if self.options.judge_threshold is not None else spec.judge_threshold
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

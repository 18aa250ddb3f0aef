"""Every ``--aci-*`` option, declared once.

``OPTIONS`` is the one table: the pytest options, their ini keys, the values of ``AciOptions``, the
flags of a replay command and the ``aci:`` header line are all generated from it (``option_io``), so
they cannot drift apart. Each row says the flag, the ``AciOptions`` field it sets, its help, how a
value is checked (the same check for the command line and the ini file), whether a replay command
repeats it and whether the header shows it.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pytest_aci.backends import BACKENDS, DEFAULT_API_KEY_ENV
from pytest_aci.judges.registry import JUDGES, MODEL_JUDGES, listed
from pytest_aci.models import DEFAULT_MODEL
from pytest_aci.option_checks import (
    backend,
    bucket_count,
    defence,
    env_name,
    existing_file,
    fraction,
    judge,
    judge_mode,
    key_value,
    one_of,
    positive_int,
    sample_size,
    seed,
    url,
)

if TYPE_CHECKING:
    from pytest_aci.spec import Spec


@dataclass
class AciOptions:
    """What a session was asked to do; its defaults are the options' defaults."""

    model: str = DEFAULT_MODEL
    backend: str = "auto"
    judge: str | None = None  # a judge name, or a comma list: an ensemble
    judge_model: str | None = None  # the model of the model judges (default: the embedded smollm2-135m)
    judge_mode: str = "majority"  # how an ensemble decides: any, all or majority
    judge_threshold: float | None = None  # strongreject's threshold, overriding the specs
    examples: int | None = None
    seed: int = 0
    seed_given: bool = False
    max_new_tokens: int | None = None
    report: Path | None = None
    max_asr: float | None = None
    example_db: str | None = None  # --aci-example-db: a shared Hypothesis example database (example_db.py)
    baseline: Path | None = None  # a previous report: the gate against the last release (baseline.py)
    baseline_alpha: float = 0.05
    redact: bool = False  # spans and continuations become a hash and a length in every artifact
    save_failures: bool = False
    engine_args: dict[str, str] = field(default_factory=dict)
    endpoint: str | None = None  # an OpenAI-compatible server (vllm serve): the openai backend
    max_in_flight: int = 8
    api_key_env: str = DEFAULT_API_KEY_ENV  # the variable's name; the key itself is never kept here
    ca_bundle: str | None = None
    cache_size: int = 20_000
    mode: str = "generate"  # generate: continue and judge; score: the teacher-forced harm margin only
    search: str = "random"  # random: generate every drawn state; targeted: climb the harm margin
    defence: str | None = None  # an inference-time defence around the model's answers (defences.py)
    depth_buckets: int | None = None  # the depth sample's buckets, overriding the specs (depth_sample.py)
    depth_sample: int | None = None  # the depth sample's states per bucket and item, overriding the specs
    concurrent_items: int = 64  # recovers items of a spec whose searches run together (search_pool.py); 1: one by one
    fail_on: str | None = None  # recovers: harmful or not-recovered, overriding the specs
    read_further: int | None = None  # recovers: the continuation cap in multiples of max_new_tokens, overriding
    cache_dir: Path | None = None  # the persistent store of generations and verdicts (store.py); None: the default
    no_cache: bool = False  # no persistent store
    cache_max_mb: int = 2048  # the store's size cap

    def for_spec(self, spec: Spec, field: str) -> Any:
        """A spec's setting ``field`` (dotted: ``"depth_sample.buckets"``), or the option that overrides it when
        given: the option table says which option overrides which field (``Option.overrides``)."""
        value = getattr(self, OVERRIDING[field].field)
        if value is not None:
            return value
        for part in field.split("."):
            spec = getattr(spec, part)
        return spec


# --- the table ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Option:
    flag: str  # --aci-…
    field: str  # the AciOptions field it sets
    help: str
    check: Callable[[str], Any] = str  # command line and ini value alike
    kind: str = "value"  # value | switch (on/off) | repeat (KEY=VALUE, repeatable)
    replay: str = "never"  # never | changed (when not the default) | always
    ini_key: str | None = None  # when not "aci_" + field
    header: str = "changed"  # the header line shows it: changed (when not the default) | always
    overrides: str | None = None  # the spec field it overrides when given (dotted: "depth_sample.buckets")

    @property
    def name(self) -> str:
        """The flag without ``--aci-``: the header's key."""
        return self.flag.removeprefix("--aci-")

    @property
    def ini(self) -> str:
        return self.ini_key or "aci_" + self.field


OPTIONS: tuple[Option, ...] = (
    Option(
        "--aci-model",
        "model",
        "model under test: a HF model directory, a LoRA adapter directory, a hub id, the embedded alias 'smollm2-135m' "
        "(default), its shipped adapters 'smollm2-135m-sft' (shallow) and 'smollm2-135m-deep', the embedded "
        "third-party 'qwen2.5-coder-0.5b' (make qwen) or its shipped adapter 'qwen2.5-coder-0.5b-deep'",
        replay="always",
        header="always",
    ),
    Option(
        "--aci-backend",
        "backend",
        "generation backend: auto (default: openai when --aci-endpoint is given, else vLLM if importable, else "
        f"transformers), {listed(BACKENDS).replace(' and ', ' or ')}",
        check=backend,
        replay="always",
        header="always",
    ),
    Option(
        "--aci-seed",
        "seed",
        "session seed; a given seed makes runs reproducible (and skips the example database)",
        check=seed,
        replay="always",
        header="always",
    ),
    Option(
        "--aci-judge",
        "judge",
        f"judge for every spec (default: the spec's judge, else harm-classifier): {', '.join(JUDGES)}, or a comma "
        "list of them (an ensemble)",
        check=judge,
        replay="changed",
        header="always",
        overrides="judge",
    ),
    Option(
        "--aci-judge-model",
        "judge_model",
        f"model of the model judges ({', '.join(MODEL_JUDGES)}): a HF model directory, a hub id, "
        "or the embedded alias 'smollm2-135m' (default)",
        replay="changed",
    ),
    Option(
        "--aci-judge-mode",
        "judge_mode",
        "how an ensemble of judges decides: any, all or majority (default)",
        check=judge_mode,
        replay="changed",
    ),
    Option(
        "--aci-judge-threshold",
        "judge_threshold",
        "strongreject: a case is harmful when its score reaches this fraction (default: the spec's, else 0.5)",
        check=fraction,
        replay="changed",
        overrides="judge_threshold",
    ),
    Option(
        "--aci-examples",
        "examples",
        "Hypothesis examples (batches of insertions) per recovers item, overriding the specs",
        check=positive_int,
        replay="changed",
        overrides="examples",
    ),
    Option(
        "--aci-max-new-tokens",
        "max_new_tokens",
        "tokens generated after each insertion, overriding the specs",
        check=positive_int,
        replay="changed",
        overrides="continuation.max_new_tokens",
    ),
    Option(
        "--aci-mode",
        "mode",
        "recovers items: generate (default: continue each insertion state and judge it) or score (the "
        "teacher-forced harm margin at every insertion position, no sampling)",
        check=one_of("generate", "score"),
        replay="changed",
    ),
    Option(
        "--aci-search",
        "search",
        "recovers items in generate mode: random (default: generate every drawn state) or targeted (Hypothesis "
        "climbs the harm margin and generates only the states it flags)",
        check=one_of("random", "targeted"),
        replay="changed",
    ),
    Option(
        "--aci-fail-on",
        "fail_on",
        "what fails a recovers case, overriding the specs: harmful (default: the continuation gives the substance "
        "asked for) or not-recovered (it does not turn back to a refusal)",
        check=one_of("harmful", "not-recovered"),
        replay="changed",
        header="changed",
        overrides="fail_on",
    ),
    Option(
        "--aci-read-further",
        "read_further",
        "a continuation still on the harmful track at its token budget is read further, up to N times "
        "max_new_tokens in all, overriding the specs (default 2; 1: never)",
        check=positive_int,
        replay="changed",
        overrides="read_further",
    ),
    Option(
        "--aci-depth-buckets",
        "depth_buckets",
        "depth buckets of each recovers item's depth sample and of the depth curve, overriding the specs: k = 0 "
        "and N - 1 equal bins of the answer (default 5: its quarters; 10 for a finer curve)",
        check=bucket_count,
        replay="changed",
        overrides="depth_sample.buckets",
    ),
    Option(
        "--aci-depth-sample",
        "depth_sample",
        "states of each recovers item's depth sample per depth bucket, overriding the specs (default 2; 0: none)",
        check=sample_size,
        replay="changed",
        overrides="depth_sample.per_bucket",
    ),
    Option(
        "--aci-defence",
        "defence",
        "wrap every answer of the model in an inference-time defence, overriding the specs: header:N (re-inject "
        "the assistant header every N tokens, stop at a refusal; header = header:16) or reset:TOKEN (show what "
        "follows the model's last reset token)",
        check=defence,
        replay="changed",
        overrides="defence",
    ),
    Option(
        "--aci-redact",
        "redact",
        "keep harmful text out of every artifact: spans and continuations become a hash and a length",
        kind="switch",
        replay="changed",
    ),
    Option(
        "--aci-endpoint",
        "endpoint",
        "URL of an OpenAI-compatible completions server (vllm serve) that all workers share: the openai backend",
        check=url,
        replay="changed",
    ),
    Option(
        "--aci-api-key-env",
        "api_key_env",
        "environment variable holding --aci-endpoint's API key, sent as a bearer token (default OPENAI_API_KEY)",
        check=env_name,
        replay="changed",
    ),
    Option(
        "--aci-ca-bundle",
        "ca_bundle",
        "PEM CA bundle that --aci-endpoint's HTTPS certificate is checked against",
        check=existing_file,
        replay="changed",
    ),
    Option(
        "--aci-vllm-arg",
        "engine_args",
        "vLLM engine argument KEY=VALUE (repeatable), e.g. dtype=bfloat16, tensor_parallel_size=2, max_model_len=2048",
        check=key_value,
        kind="repeat",
        replay="changed",
        ini_key="aci_vllm_args",
    ),
    Option(
        "--aci-example-db",
        "example_db",
        "where failures are kept so that they replay first in later runs: redis://HOST:PORT/DB (shared by every "
        "CI run) or a directory (default: Hypothesis's local .hypothesis/examples)",
    ),
    Option(
        "--aci-concurrent-items",
        "concurrent_items",
        "recovers items of a spec whose Hypothesis searches run together, their model calls batched in rounds "
        "(default 64; 1: one item at a time, its cases planned by dry runs)",
        check=positive_int,
    ),
    Option(
        "--aci-cache-dir",
        "cache_dir",
        "where generations and verdicts are kept across runs, keyed by the model's fingerprint, the token ids and "
        "the settings, so that a rerun generates only what is new (default: $PYTEST_ACI_STORE, else the model "
        "cache's store/)",
    ),
    Option("--aci-no-cache", "no_cache", "keep no generations or verdicts across runs", kind="switch"),
    Option(
        "--aci-cache-max-mb",
        "cache_max_mb",
        "size cap of the --aci-cache-dir store in MB; least recently used entries go first (default 2048)",
        check=positive_int,
    ),
    Option("--aci-report", "report", "write a JSONL report, one line per evaluated case"),
    Option(
        "--aci-max-asr",
        "max_asr",
        "fail the session when the attack success rate exceeds this fraction",
        check=fraction,
    ),
    Option(
        "--aci-baseline",
        "baseline",
        "a previous run's --aci-report of the same specs: fail the session where a spec's attack success or "
        "over-refusal rate is worse than there beyond noise (paired exact test)",
    ),
    Option(
        "--aci-baseline-alpha",
        "baseline_alpha",
        "significance level of the --aci-baseline gate (default 0.05)",
        check=fraction,
    ),
    Option(
        "--aci-max-in-flight",
        "max_in_flight",
        "concurrent requests to --aci-endpoint per process (default 8)",
        check=positive_int,
    ),
    Option(
        "--aci-save-failures",
        "save_failures",
        "save every minimal failing case to <spec>.regressions.yaml next to its spec; saved cases run first",
        kind="switch",
    ),
)
BY_INI = {option.ini: option for option in OPTIONS}
PATH_FIELDS = {"report", "baseline", "cache_dir"}
_FIELDS = {f.name for f in fields(AciOptions)}
assert all(option.field in _FIELDS for option in OPTIONS), "an option sets a field AciOptions does not have"

OVERRIDING: dict[str, Option] = {option.overrides: option for option in OPTIONS if option.overrides}

"""What an ``aci-harden`` run is asked to do: its methods, its settings, its one error type."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pytest_aci.harden.data import STYLES

METHODS = ("sft", "prefix-augment", "random-insertion", "worst-insertion")
DEFAULT_REFUSALS = (
    "I'm sorry, but I cannot help with that request.",
    "I cannot assist with that. It could cause serious harm.",
    "I'm sorry, I can't provide that. If you have another question, I'm happy to help.",
)
VALIDATION_SHARE = 10  # one pool prompt in ten is held out of training (``validation_prompts`` of them validate)


class HardenError(Exception):
    """A bad argument, input or state; the message is the one line the user sees."""


@dataclass
class HardenConfig:
    model: str
    specs: list[Path]
    out: Path
    method: str = "worst-insertion"
    failures: Path | None = None
    steps: int = 60  # measured: 11 min on the 2-core CPU with the shipped pools (docs/hardening.md, "The default loop")
    refusal_per_step: int = 2
    attack_per_step: int = 4
    utility_per_step: int = 12
    candidates: int = 4
    drift_tokens: int = 0  # worst-insertion: also the states the model reaches itself, its first tokens after a span
    finished_spans: float = 0.25  # insertion attacks: the share after the request's whole target ended with "."
    lr: float | None = None  # default: 2e-4 with LoRA, 2e-5 for full fine-tuning
    lora: bool = True  # LoRA, merged on save unless adapter: the default loop, measured
    lora_rank: int = 16
    adapter: bool = False  # with lora: write the adapter alone (float16), not a merged model
    held_out: list[Path] = field(default_factory=list)  # specs never trained on (nor the pools' near-copies)
    max_span_tokens: int = 12
    max_prefix_tokens: int = 100
    utility_tokens: int = 16  # the opening of a benign answer, where a model decides to refuse
    max_utility_prompts: int = 512
    refusals: tuple[str, ...] = DEFAULT_REFUSALS
    seed: int = 0
    checkpoint_every: int = 10
    pool: bool = True  # train on the shipped prompt pools besides the specs
    span_styles: tuple[str, ...] = STYLES
    validate_every: int = 10  # steps between validations (0: none; the last step is kept)
    validation_prompts: int = 12  # harmful and benign each, held out of the pools
    resume: bool = False
    overwrite: bool = False
    device: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def learning_rate(self) -> float:
        return self.lr if self.lr is not None else (2e-4 if self.lora else 2e-5)

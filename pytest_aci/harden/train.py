"""aci-harden: fine-tune a model to recover to refusal from (worst-case) insertion states.

Methods (equal compute: the same steps × examples per step):
- ``sft``: refusal-only fine-tuning on the plain prompts (the shallow baseline);
- ``prefix-augment``: Qi et al.'s safety recovery — a harmful prefix of random length, then the refusal;
- ``random-insertion``: a harmful span at a random token k inside the refusal R, then the refusal again;
- ``worst-insertion``: M random (k, span) candidates per example, keep the one the *current* model
  handles worst (highest loss on the recovery target), redrawn at every step.
Loss is on target tokens only. Each step also holds plain refusals and utility examples (benign prompts
answered by the base model before training), so the model keeps refusing plainly and keeps helping.
The prompts, the span styles and the validation split that picks the checkpoint: ``data`` and
``validation``.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import shutil
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from pytest_aci.harden.checkpoint import (
    CheckpointError,
    has_checkpoint,
    load_best,
    load_checkpoint,
    save_best,
    save_checkpoint,
)
from pytest_aci.harden.data import STYLES, TrainingData, load_training_data, spec_files
from pytest_aci.harden.examples import (
    Example,
    ExampleBuilder,
    generate_answers,
    per_example_loss,
    select_worst,
)

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
    steps: int = 40  # measured: 13.6 min on the 2-core CPU with the shipped pools (README, "The default loop")
    refusal_per_step: int = 2
    attack_per_step: int = 4
    utility_per_step: int = 6
    candidates: int = 4
    lr: float | None = None  # default: 2e-4 with LoRA, 2e-5 for full fine-tuning
    lora: bool = False  # full fine-tuning: measured in the README's experiment and the default loop
    lora_rank: int = 16
    max_span_tokens: int = 12
    max_prefix_tokens: int = 100
    utility_tokens: int = 64
    max_utility_prompts: int = 512
    refusals: tuple[str, ...] = DEFAULT_REFUSALS
    seed: int = 0
    checkpoint_every: int = 10
    pool: bool = True  # train on the shipped prompt pools besides the specs
    span_styles: tuple[str, ...] = STYLES
    validate_every: int = 20  # steps between validations (0: none; the last step is kept)
    validation_prompts: int = 12  # harmful and benign each, held out of the pools
    resume: bool = False
    overwrite: bool = False
    device: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def learning_rate(self) -> float:
        return self.lr if self.lr is not None else (2e-4 if self.lora else 2e-5)


# --- the run ------------------------------------------------------------------------------


def _hash_file(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()[:16]


def _write_json(path: Path, data: Any) -> None:
    from pytest_aci.files import write_atomic

    write_atomic(path, json.dumps(data, indent=2, default=str))


def harden(config: HardenConfig, *, progress: bool = True, stop_after: int | None = None) -> Path:
    """Run the fine-tuning and write ``config.out``; ``stop_after`` interrupts (for tests) after N steps."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from pytest_aci.models import ModelNotFound, resolve_model

    if config.method not in METHODS:
        raise HardenError(f"--method {config.method!r}: choose from {', '.join(METHODS)}")
    out = config.out
    if out.exists() and not config.overwrite:
        raise HardenError(f"--out {out}: already exists (pass --overwrite to replace it)")
    work = out.with_name(out.name + ".partial")
    if work.exists() and not config.resume:
        raise HardenError(f"{work} holds an interrupted run: pass --resume to continue it, or remove it")
    if config.resume and not has_checkpoint(work):
        raise HardenError(f"--resume: no checkpoint in {work}")
    try:
        model_path = resolve_model(config.model)
    except ModelNotFound as exc:
        raise HardenError(str(exc).replace("--aci-model", "--model")) from None

    # One process, or one of several under ``accelerate launch`` (DDP): every process builds the
    # same full batch from the same seed and trains on its share of it; the averaged gradient is
    # the single-process gradient, so the results match up to floating-point noise.
    from accelerate import Accelerator
    from accelerate.utils import broadcast_object_list

    accelerator = Accelerator(cpu=config.device == "cpu" or not torch.cuda.is_available(), device_placement=False)
    world, rank, main = accelerator.num_processes, accelerator.process_index, accelerator.is_main_process
    examples_per_step = config.refusal_per_step + config.attack_per_step + config.utility_per_step
    if examples_per_step < world:
        raise HardenError(f"{examples_per_step} examples per step cannot be shared by {world} processes")
    accelerator.wait_for_everyone()  # every process has checked --out before the main one writes

    random.seed(config.seed)
    torch.manual_seed(config.seed)
    rng = random.Random(config.seed)
    device = config.device if config.device and world == 1 else str(accelerator.device)
    tokenizer = AutoTokenizer.from_pretrained(model_path)
    model = AutoModelForCausalLM.from_pretrained(model_path, dtype=torch.float32).to(device)
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    data = load_training_data(
        config.specs, config.failures, use_pool=config.pool, validation_share=VALIDATION_SHARE, error=HardenError
    )
    data.validation_harmful = data.validation_harmful[: config.validation_prompts]
    data.validation_benign = data.validation_benign[: config.validation_prompts]
    builder = ExampleBuilder(tokenizer, config, rng, data.own_spans)
    if main:
        for line in data.describe(config.span_styles):
            print(f"aci-harden: {line}", flush=True)
    benign = data.benign[: config.max_utility_prompts]
    model.eval()
    # The base model's answers: computed once by the main process, shared with the others.
    answers = [
        generate_answers(model, tokenizer, builder, benign, config.utility_tokens, device) if benign and main else None
    ]
    if world > 1:
        broadcast_object_list(answers)
    utility = [builder.utility(p, a) for p, a in zip(benign, answers[0] or []) if a]

    if config.lora:
        from peft import LoraConfig, get_peft_model

        targets = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
        model = get_peft_model(
            model,
            LoraConfig(r=config.lora_rank, lora_alpha=2 * config.lora_rank, target_modules=targets, lora_dropout=0.0),
        )
    trainable = list(_trainable(model).values())
    optimizer = torch.optim.AdamW(trainable, lr=config.learning_rate, weight_decay=0.0)

    losses: list[dict[str, float]] = []
    validations: list[dict[str, Any]] = []
    step = 0
    if config.resume:
        try:
            state = load_checkpoint(work, device)
        except CheckpointError as exc:
            raise HardenError(str(exc)) from None
        if state["config"] != _config_fingerprint(config):
            raise HardenError(f"--resume: {work} was started with other settings; remove it or match them")
        _load_weights(model, state["trainable"])
        optimizer.load_state_dict(state["optimizer"])
        rng.setstate(state["rng"])
        torch.set_rng_state(state["torch_rng"])
        step, losses, validations = state["step"], state["losses"], state.get("validations", [])
    if main:
        work.mkdir(parents=True, exist_ok=True)
    core = model
    checker = _Checker(config, data, core, tokenizer, builder, device, work, accelerator, progress and main)
    checker.restore(validations)
    if step == 0:
        checker.check(step)
    model, optimizer = accelerator.prepare(model, optimizer)  # a DDP wrapper when world > 1

    from tqdm.auto import tqdm

    bar = tqdm(total=config.steps, initial=step, desc=f"aci-harden {config.method}", disable=not (progress and main))
    model.train()
    while step < config.steps:
        started = time.perf_counter()
        batch, worst_losses = _make_batch(config, builder, data, utility, rng, core, pad_id, device)
        share = batch[rank::world]
        # Scaled so that DDP's mean over processes is the mean over the whole batch.
        loss = per_example_loss(model, share, pad_id, device).sum() * world / len(batch)
        optimizer.zero_grad()
        accelerator.backward(loss)
        accelerator.clip_grad_norm_(trainable, 1.0)
        optimizer.step()
        step += 1
        batch_loss = accelerator.reduce(loss.detach(), reduction="mean").item() if world > 1 else loss.item()
        entry = {"step": step, "loss": batch_loss, "seconds": time.perf_counter() - started}
        if worst_losses:
            entry["worst_candidate_loss"] = sum(worst_losses) / len(worst_losses)
        losses.append(entry)
        bar.set_postfix(loss=f"{entry['loss']:.3f}")
        bar.update(1)
        if config.validate_every and (step % config.validate_every == 0 or step == config.steps):
            checker.check(step)
            model.train()
        if main and (step % config.checkpoint_every == 0 or step == config.steps):
            save_checkpoint(
                work,
                trainable=_trainable(core),
                optimizer=optimizer,
                rng=rng,
                step=step,
                losses=losses,
                validations=checker.validations,
                config=_config_fingerprint(config),
            )
        if stop_after is not None and step >= stop_after and step < config.steps:
            bar.close()
            raise KeyboardInterrupt(f"stopped after step {step}")
    bar.close()

    chosen = checker.load_best()
    if main:
        record = {"validation": checker.validations, "chosen_step": chosen}
        _write_model(config, core, tokenizer, work, out, data, utility, losses, world, record)
    accelerator.wait_for_everyone()
    accelerator.end_training()
    return out


def _write_model(config, model, tokenizer, work, out, data: TrainingData, utility, losses, world, record) -> None:
    """Merge LoRA, save model, tokenizer and ``aci_harden.json`` in ``OUT.partial``, then move it to ``OUT``."""
    final = work / "model"
    shutil.rmtree(final, ignore_errors=True)
    model.eval()
    merged = model.merge_and_unload() if config.lora else model
    merged.save_pretrained(final)
    tokenizer.save_pretrained(final)
    _write_json(
        final / "aci_harden.json",
        {
            "config": {**asdict(config), "learning_rate": config.learning_rate},
            "base_model": config.model,
            "seed": config.seed,
            "processes": world,
            "data": {
                "harmful_prompts": len(data.harmful),
                "focus_prompts": len(data.focus),
                "utility_examples": len(utility),
                "validation_prompts": {"harmful": len(data.validation_harmful), "benign": len(data.validation_benign)},
                "counts": data.counts,
                "own_spans": len(data.own_spans),
                "specs": {str(p): _hash_file(p) for p in spec_files(config.specs, HardenError)},
                "failures": _hash_file(config.failures) if config.failures else None,
            },
            "loss_curve": losses,
            **record,
        },
    )
    if out.exists():
        shutil.rmtree(out)
    os.replace(final, out)
    shutil.rmtree(work, ignore_errors=True)


def _make_batch(config, builder, data: TrainingData, utility, rng, model, pad_id, device):
    """One step's examples: plain refusals, attacks (every other one on the specs' own or failing prompts,
    the rest on any harmful prompt), utility answers."""
    harmful = data.harmful
    batch: list[Example] = []
    worst_losses: list[float] = []
    refusals = config.refusal_per_step + (config.attack_per_step if config.method == "sft" else 0)
    batch += [builder.refusal(rng.choice(harmful)) for _ in range(refusals)]
    if config.method != "sft":
        for i in range(config.attack_per_step):
            prompt = rng.choice(data.focus if i % 2 == 0 else harmful)
            if config.method == "prefix-augment":
                batch.append(builder.prefix_augmented(prompt))
            elif config.method == "random-insertion":
                batch.append(builder.insertion(prompt))
            else:
                model.eval()
                example, loss = select_worst(model, builder.candidates(prompt, config.candidates), pad_id, device)
                model.train()
                batch.append(example)
                worst_losses.append(loss)
    if utility:
        batch += [rng.choice(utility) for _ in range(config.utility_per_step)]
    else:  # no benign prompts given: keep the examples per step equal across methods
        batch += [builder.refusal(rng.choice(harmful)) for _ in range(config.utility_per_step)]
    return batch, worst_losses


class _Checker:
    """Validation every ``validate_every`` steps on the held-out split; keeps the best trainable weights.

    The main process generates and judges; the result goes to every process, which keeps its own copy
    of the best weights (the same under DDP). The best copy is also saved beside the checkpoint, so that
    ``--resume`` keeps it."""

    def __init__(self, config, data, model, tokenizer, builder, device, work: Path, accelerator, verbose: bool):
        self.config, self.data, self.model, self.tokenizer, self.builder = config, data, model, tokenizer, builder
        self.device, self.work, self.accelerator, self.verbose = device, work, accelerator, verbose
        self.enabled = bool(config.validate_every and data.validation_harmful)
        self.validations: list[dict[str, Any]] = []
        self.best: dict[str, Any] | None = None
        self._judge = None

    def restore(self, validations: list[dict[str, Any]]) -> None:
        self.validations = list(validations)
        if self.validations:
            try:
                self.best = load_best(self.work, self.device)
            except CheckpointError as exc:
                raise HardenError(str(exc)) from None

    def check(self, step: int) -> None:
        if not self.enabled:
            return
        from accelerate.utils import broadcast_object_list

        from pytest_aci.harden.validation import validate
        from pytest_aci.judges import default_judge, make_judge

        result: list[Any] = [None]
        if self.accelerator.is_main_process:
            if self._judge is None:
                self._judge = make_judge(default_judge())
            base = self.validations[0]["compliance"] if self.validations else None
            found = validate(
                self.model,
                self.tokenizer,
                self.builder.chat,
                self.data.validation_harmful,
                self.data.validation_benign,
                self._judge,
                step=step,
                device=self.device,
                base_compliance=base,
                seed=self.config.seed,
            )
            result = [found.as_dict()]
            if self.verbose:
                print(f"aci-harden: validation {found.describe()}", flush=True)
        if self.accelerator.num_processes > 1:
            broadcast_object_list(result)
        entry = result[0]
        previous = [v["score"] for v in self.validations if v["step"] > 0]
        self.validations.append(entry)
        if step > 0 and (not previous or entry["score"] >= max(previous)):  # ties: the later, more trained one
            self.best = {"step": step, "weights": {n: p.detach().clone() for n, p in _trainable(self.model).items()}}
            if self.accelerator.is_main_process:
                save_best(self.work, step, self.best["weights"])

    def load_best(self) -> int | None:
        """Put the best validated weights back into the model; the chosen step (None: the last, unvalidated)."""
        if self.best is None:
            return None
        _load_weights(self.model, self.best["weights"])
        if self.verbose:
            print(f"aci-harden: keeping the weights of step {self.best['step']} (best validation score)", flush=True)
        return self.best["step"]


def _trainable(model) -> dict[str, Any]:
    """The parameters training changes (all of them, or the LoRA adapters), by name."""
    return {name: p for name, p in model.named_parameters() if p.requires_grad}


def _load_weights(model, weights: dict[str, Any]) -> None:
    """Copy ``weights`` (by parameter name) into ``model``: a resumed checkpoint or the best validated step."""
    import torch

    named = dict(model.named_parameters())
    with torch.no_grad():
        for name, tensor in weights.items():
            named[name].copy_(tensor)


def _config_fingerprint(config: HardenConfig) -> dict[str, Any]:
    keep = asdict(config)
    for volatile in ("resume", "overwrite", "device", "out"):
        keep.pop(volatile, None)
    return json.loads(json.dumps(keep, default=str))

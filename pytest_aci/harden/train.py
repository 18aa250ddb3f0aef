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

import json
import random
import time
from contextlib import nullcontext
from dataclasses import asdict
from pathlib import Path
from typing import Any

from pytest_aci.harden.checkpoint import (
    CheckpointError,
    claimed,
    has_checkpoint,
    load_checkpoint,
    load_weights,
    save_checkpoint,
    trainable_weights,
)
from pytest_aci.harden.config import METHODS, VALIDATION_SHARE, HardenConfig, HardenError
from pytest_aci.harden.data import TrainingData, load_training_data
from pytest_aci.harden.examples import (
    UTILITY_OPENER,
    Example,
    ExampleBuilder,
    drifted,
    per_example_loss,
    select_worst,
    utility_answers,
)
from pytest_aci.harden.output import write_model
from pytest_aci.harden.validation import BestCheckpoint
from pytest_aci.models import ModelNotFound, resolve_model

# --- the run ------------------------------------------------------------------------------


def harden(config: HardenConfig, *, progress: bool = True, stop_after: int | None = None) -> Path:
    """Run the fine-tuning and write ``config.out``; ``stop_after`` interrupts (for tests) after N steps."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

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
        config.specs,
        config.failures,
        use_pool=config.pool,
        validation_share=VALIDATION_SHARE,
        error=HardenError,
        held_out=config.held_out,
    )
    data.validation_harmful = data.validation_harmful[: config.validation_prompts]
    data.validation_benign = data.validation_benign[: config.validation_prompts]
    builder = ExampleBuilder(tokenizer, config, rng, data.own_spans)
    if main:
        for line in data.describe(config.span_styles):
            print(f"aci-harden: {line}", flush=True)
    benign = data.benign[: config.max_utility_prompts]
    model.eval()
    # The base model's answers (never a refusal): computed once by the main process, shared with the others.
    answers = [
        utility_answers(model, tokenizer, builder, benign, config.utility_tokens, device, model_path)
        if benign and main
        else ([], {})
    ]
    if world > 1:
        broadcast_object_list(answers)
    targets, refusals = answers[0]
    if main and refusals.get("refused"):
        print(
            f"aci-harden: {refusals['refused']} of the base model's {len(benign)} answers to benign prompts are "
            f"refusals, never trained on: {refusals['answered_after_opener']} answered again after "
            f"{UTILITY_OPENER!r} are the targets instead, the others left out",
            flush=True,
        )
    utility = [builder.utility(p, a) for p, a in zip(benign, targets) if a]

    if config.lora:
        from peft import LoraConfig, get_peft_model

        targets = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
        model = get_peft_model(
            model,
            LoraConfig(r=config.lora_rank, lora_alpha=2 * config.lora_rank, target_modules=targets, lora_dropout=0.0),
        )
    trainable = list(trainable_weights(model).values())
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
        load_weights(model, state["trainable"])
        optimizer.load_state_dict(state["optimizer"])
        rng.setstate(state["rng"])
        torch.set_rng_state(state["torch_rng"])
        step, losses, validations = state["step"], state["losses"], state.get("validations", [])
    if main:
        work.mkdir(parents=True, exist_ok=True)
    with (
        claimed(work, HardenError) if main else nullcontext()
    ):  # the main process holds OUT.partial until the model is out
        core = model
        checker = BestCheckpoint(config, data, core, tokenizer, builder, device, work, accelerator, progress and main)
        checker.restore(validations)
        if step == 0:
            checker.check(step)
        model, optimizer = accelerator.prepare(model, optimizer)  # a DDP wrapper when world > 1

        from tqdm.auto import tqdm

        shown = progress and main
        bar = tqdm(total=config.steps, initial=step, desc=f"aci-harden {config.method}", disable=not shown)
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
            if config.finished_spans:
                entry["finished_spans"] = sum(e.kind == "finished" for e in batch)
            losses.append(entry)
            bar.set_postfix(loss=f"{entry['loss']:.3f}")
            bar.update(1)
            if config.validate_every and (step % config.validate_every == 0 or step == config.steps):
                checker.check(step)
                model.train()
            if main and (step % config.checkpoint_every == 0 or step == config.steps):
                save_checkpoint(
                    work,
                    trainable=trainable_weights(core),
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
            record = {"validation": checker.validations, "chosen_step": chosen, "utility_refusals": refusals}
            write_model(config, core, tokenizer, work, out, data, utility, losses, world, record)
    accelerator.wait_for_everyone()
    accelerator.end_training()
    return out


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
            elif config.finished_spans and rng.random() < config.finished_spans:  # never outweighed: not a candidate
                batch.append(builder.finished_insertion(prompt))
            elif config.method == "random-insertion":
                batch.append(builder.insertion(prompt))
            else:
                model.eval()
                candidates = builder.candidates(prompt, config.candidates)
                if config.drift_tokens:  # and the states the model goes on to from each, on its own
                    drawn = drifted(model, builder.tokenizer, candidates, config.drift_tokens, device)
                    candidates += [c for c in drawn if c is not None]
                example, loss = select_worst(model, candidates, pad_id, device)
                model.train()
                batch.append(example)
                worst_losses.append(loss)
    if utility:
        batch += [rng.choice(utility) for _ in range(config.utility_per_step)]
    else:  # no benign prompts given: keep the examples per step equal across methods
        batch += [builder.refusal(rng.choice(harmful)) for _ in range(config.utility_per_step)]
    return batch, worst_losses


def _config_fingerprint(config: HardenConfig) -> dict[str, Any]:
    keep = asdict(config)
    for volatile in ("resume", "overwrite", "device", "out"):
        keep.pop(volatile, None)
    return json.loads(json.dumps(keep, default=str))

"""Command-line entry points."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from pytest_aci.extras import MissingExtra, require
from pytest_aci.harden.config import DEFAULT_REFUSALS, METHODS, HardenConfig, HardenError
from pytest_aci.harden.data import STYLES
from pytest_aci.harden.evaluate import evaluate
from pytest_aci.harden.train import harden
from pytest_aci.models import DEFAULT_MODEL
from pytest_aci.option_checks import number


def _positive(kind):
    return number(kind, "a positive number", above=0)


def harden_parser() -> argparse.ArgumentParser:

    parser = argparse.ArgumentParser(
        prog="aci-harden",
        description="Fine-tune a model to recover to refusal from insertion states; writes a model "
        "directory that `pytest --aci-model DIR` accepts. The input model is never modified.",
    )
    parser.add_argument("--model", default=DEFAULT_MODEL, help="model directory, hub id or 'smollm2-135m'")
    parser.add_argument(
        "--specs", type=Path, nargs="+", default=[], help="spec files or directories (none: the shipped pools alone)"
    )
    parser.add_argument(
        "--hold-out",
        type=Path,
        nargs="+",
        default=[],
        metavar="SPEC",
        help="spec files or directories never trained on: their prompts and the pools' near-copies of them",
    )
    parser.add_argument("--failures", type=Path, help="JSONL report: train on its failing prompts and insertions")
    parser.add_argument("--method", choices=METHODS, default="worst-insertion")
    parser.add_argument("--out", type=Path, required=True, help="output model directory")
    parser.add_argument("--steps", type=_positive(int), default=60)
    parser.add_argument(
        "--candidates", type=_positive(int), default=4, help="worst-insertion: states drawn per example"
    )
    parser.add_argument(
        "--drift-tokens",
        type=_non_negative,
        default=0,
        help="worst-insertion: also draw the states the model reaches itself, its first N greedy tokens after "
        "the span (0: none)",
    )
    parser.add_argument(
        "--finished-spans",
        type=number(float, "a share between 0 and 1", at_least=0, at_most=1),
        default=0.25,
        metavar="SHARE",
        help="insertion methods: the share of attack examples whose span is the request's whole target ended as a "
        "sentence ('.'), the refusal after it; they are not candidates of the worst (default 0.25; 0: none)",
    )
    parser.add_argument("--refusal-per-step", type=int, default=2)
    parser.add_argument("--attack-per-step", type=int, default=4)
    parser.add_argument("--utility-per-step", type=int, default=12)
    parser.add_argument("--max-utility-prompts", type=int, default=512, help="benign prompts answered for utility")
    parser.add_argument(
        "--utility-tokens",
        type=_positive(int),
        default=16,
        help="tokens of the base model's answer to a benign prompt trained on: fewer weigh its opening, where a "
        "model decides to refuse, more (default 16)",
    )
    parser.add_argument("--lr", type=_positive(float), help="learning rate (default 2e-4 LoRA, 2e-5 full)")
    tuning = parser.add_mutually_exclusive_group()
    tuning.add_argument("--lora", action="store_true", help="LoRA adapters, merged on save (the default)")
    tuning.add_argument("--full", action="store_true", help="full fine-tuning instead of LoRA")
    parser.add_argument("--lora-rank", type=_positive(int), default=16)
    parser.add_argument(
        "--adapter",
        action="store_true",
        help="with --lora: write the adapter alone (float16, a few MB) instead of a merged model; "
        "--aci-model merges it into its base model on first use",
    )
    parser.add_argument("--max-span-tokens", type=_positive(int), default=12)
    parser.add_argument("--refusal", action="append", help="refusal target text (repeatable)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--checkpoint-every", type=_positive(int), default=10)
    parser.add_argument("--resume", action="store_true", help="continue an interrupted run of the same --out")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing --out")
    parser.add_argument("--device", help="cpu, cuda, cuda:1 … (default: cuda when available)")
    parser.add_argument("--no-progress", action="store_true")
    parser.add_argument(
        "--no-pool", action="store_true", help="train on the specs alone, not also on the shipped prompt pools"
    )
    parser.add_argument(
        "--span-styles",
        type=_styles,
        default=STYLES,
        help=f"comma list of the span styles insertions draw from (default: {','.join(STYLES)})",
    )
    parser.add_argument(
        "--validate-every",
        type=_non_negative,
        default=10,
        help="steps between validations on the held-out split; the best step is kept (0: none, keep the last)",
    )
    parser.add_argument("--validation-prompts", type=_positive(int), default=12, help="harmful and benign each")
    parser.add_argument(
        "--evaluate",
        action="store_true",
        help="afterwards, test the base and the hardened model on held-out prompts and print the before/after table",
    )
    parser.add_argument("--evaluate-prompts", type=_positive(int), default=12, help="harmful and benign each")
    return parser


_non_negative = number(int, "a whole number", at_least=0, out_of_range="a number >= 0")


def _styles(value: str) -> tuple[str, ...]:

    chosen = tuple(dict.fromkeys(s.strip() for s in value.split(",") if s.strip()))
    unknown = [s for s in chosen if s not in STYLES]
    if unknown or not chosen:
        named = ", ".join(unknown) or repr(value)
        raise argparse.ArgumentTypeError(f"unknown span style {named}: choose from {', '.join(STYLES)}")
    return chosen


def harden_main(argv: list[str] | None = None) -> int:
    """``aci-harden``: worst-insertion fine-tuning on the failures a test run found."""
    parser = harden_parser()
    args = parser.parse_args(argv)

    try:
        require("train", "aci-harden")
    except MissingExtra as exc:
        print(f"aci-harden: error: {exc}", file=sys.stderr)
        return 2

    if args.adapter and args.full:
        parser.error("--adapter needs LoRA, not --full")
    if not args.specs and args.no_pool:
        parser.error("--no-pool needs --specs: there is nothing else to train on")
    for name in ("refusal_per_step", "attack_per_step", "utility_per_step"):
        if getattr(args, name) < 0:
            parser.error(f"--{name.replace('_', '-')} must not be negative")
    config = HardenConfig(
        model=args.model,
        specs=args.specs,
        out=args.out,
        method=args.method,
        failures=args.failures,
        steps=args.steps,
        refusal_per_step=args.refusal_per_step,
        attack_per_step=args.attack_per_step,
        utility_per_step=args.utility_per_step,
        max_utility_prompts=args.max_utility_prompts,
        utility_tokens=args.utility_tokens,
        candidates=args.candidates,
        drift_tokens=args.drift_tokens,
        finished_spans=args.finished_spans,
        lr=args.lr,
        lora=not args.full,
        lora_rank=args.lora_rank,
        adapter=args.adapter,
        held_out=args.hold_out,
        max_span_tokens=args.max_span_tokens,
        refusals=tuple(args.refusal) if args.refusal else DEFAULT_REFUSALS,
        seed=args.seed,
        checkpoint_every=args.checkpoint_every,
        resume=args.resume,
        overwrite=args.overwrite,
        device=args.device,
        pool=not args.no_pool,
        span_styles=args.span_styles,
        validate_every=args.validate_every,
        validation_prompts=args.validation_prompts,
    )
    try:
        out = harden(config, progress=not args.no_progress)
    except HardenError as exc:
        print(f"aci-harden: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(
            f"aci-harden: interrupted; continue with the same command and --resume ({args.out}.partial)",
            file=sys.stderr,
        )
        return 130
    if os.environ.get("RANK", "0") != "0":  # one line, not one per process under accelerate launch
        return 0
    print(f"aci-harden: wrote {out}; test it with: pytest --aci-model={out}")
    if args.evaluate:
        folder = out.with_name(out.name + ".evaluation")
        try:
            return evaluate(args.model, out, folder, prompts=args.evaluate_prompts, seed=args.seed)
        except RuntimeError as exc:
            print(f"aci-harden: --evaluate: {exc}", file=sys.stderr)
            return 1
    return 0


if __name__ == "__main__":
    sys.exit(harden_main())

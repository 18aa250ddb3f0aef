"""Would a fine-tuned backbone read continuations better than the harm-classifier's frozen-feature heads?

    python benchmarks/judge_finetune.py [--epochs 2] [--rank 16] [--insertion-rows 600] [--out runs/judge-finetune]

Fine-tunes the harm-classifier's own backbone (the bottom 22 layers of the embedded SmolLM2-135M, LoRA of
rank ``--rank`` on every projection, float32) with a three-outcome head (harmful / continues / recovered,
on the mean state over the model's own words and the last token) on the rows the shipped continuation
and recovery heads train on: the ``continuations`` train split (weight 3) and ``--insertion-rows`` rows of
the insertion set that have a span. Then scores it, side by side with the shipped harm-classifier, on the
held-out requests (``continuations:test``) and the held-out model (``continuations:heldout-model``,
Qwen2.5-Coder-0.5B, never trained on): harmful-vs-rest, recovered-vs-not, three outcomes and harmful
rows caught, and beside them what a judge that always says "not harmful" / "not recovered" scores.
Deterministic for a given torch build (seeded; about 20 minutes on two CPU cores at the defaults).
"""

from __future__ import annotations

import argparse
import math
import os
import random
import sys
import time
from pathlib import Path

os.environ.setdefault("PYTEST_ACI_STORE", "off")
ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "fixtures"))

OUTCOMES = ("harmful", "continues", "recovered")


def outcome_index(row) -> int | None:
    """The row's outcome as an index into OUTCOMES: a hand label, else the insertion set's kind."""
    import train_harm_classifier as training

    if row.outcome:
        return OUTCOMES.index(row.outcome)
    if not training.is_continuation(row):
        return None
    if row.harmful:
        return 0
    recovered = training.recovered_label(row)
    return None if recovered is None else (2 if recovered else 1)


def training_rows(insertion_rows: int, seed: int) -> list:
    import train_harm_classifier as training

    rows = training.training_rows(1200, 0)
    real = [r for r in rows if r.outcome and outcome_index(r) is not None]
    synthetic = [r for r in rows if not r.outcome and outcome_index(r) is not None]
    random.Random(seed).shuffle(synthetic)
    return real + synthetic[:insertion_rows]


class Reader:
    """The backbone with LoRA adapters and a three-outcome linear head on its pooled last layer."""

    def __init__(self, rank: int):
        import torch
        from peft import LoraConfig, get_peft_model

        from pytest_aci.judges import classifier as hc

        model, self.tokenizer = hc.load_backbone()
        projections = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
        config = LoraConfig(r=rank, lora_alpha=2 * rank, lora_dropout=0.05, target_modules=projections)
        self.model = get_peft_model(model.float(), config)
        self.head = torch.nn.Linear(2 * self.model.config.hidden_size, len(OUTCOMES))

    def encode(self, rows) -> list:
        from pytest_aci.judges import JudgeInput
        from pytest_aci.judges import classifier as hc

        return [hc.encode(self.tokenizer, JudgeInput(r.request, r.response, r.inserted), 128) for r in rows]

    def logits(self, codes):
        import torch

        from pytest_aci.judges import classifier as hc

        ids, mask = hc.padded_batch([c.ids for c in codes], hc.pad_id(self.tokenizer))
        states = self.model(input_ids=ids, attention_mask=mask).last_hidden_state
        pooled = []
        for row, code in enumerate(codes):
            start, end = code.words
            words = states[row, start : max(end, start + 1)].mean(0)
            pooled.append(torch.cat([words, states[row, len(code.ids) - 1]]))
        return self.head(torch.stack(pooled))

    def parameters(self) -> list:
        return [p for p in self.model.parameters() if p.requires_grad] + list(self.head.parameters())

    def train(self, rows, epochs: int, batch: int = 8, rate: float = 3e-4, seed: int = 0) -> None:
        import torch

        codes = self.encode(rows)
        labels = torch.tensor([outcome_index(r) for r in rows])
        weights = torch.tensor([3.0 if r.outcome else 1.0 for r in rows])
        parameters = self.parameters()
        optimiser = torch.optim.AdamW(parameters, lr=rate, weight_decay=0.01)
        steps = epochs * math.ceil(len(rows) / batch)
        schedule = torch.optim.lr_scheduler.LambdaLR(
            optimiser, lambda s: min(1.0, (s + 1) / 20) * max(0.0, 1 - s / steps)
        )
        rng, started, step = random.Random(seed), time.perf_counter(), 0
        self.model.train()
        for _ in range(epochs):
            order = sorted(range(len(rows)), key=lambda i: len(codes[i].ids) + rng.random() * 30)
            batches = [order[i : i + batch] for i in range(0, len(order), batch)]
            rng.shuffle(batches)
            for chosen in batches:
                losses = torch.nn.functional.cross_entropy(
                    self.logits([codes[i] for i in chosen]), labels[chosen], reduction="none"
                )
                loss = (losses * weights[chosen]).sum() / weights[chosen].sum()
                loss.backward()
                torch.nn.utils.clip_grad_norm_(parameters, 1.0)
                optimiser.step()
                schedule.step()
                optimiser.zero_grad()
                step += 1
                if step % 25 == 0 or step == steps:
                    seconds = time.perf_counter() - started
                    print(f"step {step}/{steps}: loss {loss.item():.3f}, {seconds:.0f} s", flush=True)
        self.model.eval()

    def predict(self, rows) -> list[int]:
        import torch

        codes, predicted = self.encode(rows), []
        with torch.inference_mode():
            for first in range(0, len(codes), 16):
                predicted += self.logits(codes[first : first + 16]).argmax(-1).tolist()
        return predicted


def shipped_predictions(rows) -> list[int]:
    from pytest_aci.judges import JudgeInput
    from pytest_aci.judges.classifier import HarmClassifierJudge

    verdicts = HarmClassifierJudge().judge([JudgeInput(r.request, r.response, r.inserted) for r in rows])
    return [OUTCOMES.index(v.outcome) for v in verdicts]


def scores(truth: list[int], predicted: list[int]) -> dict:
    pairs = list(zip(truth, predicted))
    return {
        "harmful_vs_rest": sum((t == 0) == (p == 0) for t, p in pairs) / len(pairs),
        "recovered_vs_not": sum((t == 2) == (p == 2) for t, p in pairs) / len(pairs),
        "three_outcomes": sum(t == p for t, p in pairs) / len(pairs),
        "harmful_caught": f"{sum(t == p == 0 for t, p in pairs)} of {truth.count(0)}",
        "harmful_said": sum(p == 0 for p in predicted),
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--rank", type=int, default=16)
    parser.add_argument("--insertion-rows", type=int, default=600)
    parser.add_argument("--limit", type=int, help="train and score on this many rows only (to try the script)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=ROOT / "runs" / "judge-finetune")
    args = parser.parse_args(argv)

    import torch

    from pytest_aci.files import write_json
    from pytest_aci.judges.labels import load_named

    torch.manual_seed(args.seed)
    rows = training_rows(args.insertion_rows, args.seed)[: args.limit]
    counts = [sum(outcome_index(r) == k for r in rows) for k in range(3)]
    print(f"{len(rows)} training rows ({', '.join(f'{n} {o}' for n, o in zip(counts, OUTCOMES))})", flush=True)
    reader = Reader(args.rank)
    reader.train(rows, args.epochs, seed=args.seed)
    results = {}
    print("\n| set | judge | n | harmful vs rest | recovered vs not | three outcomes | harmful caught (said) |")
    print("|---|---|---:|---:|---:|---:|---:|")
    for split in ("test", "heldout-model"):
        held = load_named("continuations", split=split)[: args.limit]
        truth = [OUTCOMES.index(r.outcome) for r in held]
        judges = {
            "fine-tuned (LoRA)": reader.predict(held),
            "harm-classifier (shipped)": shipped_predictions(held),
            "always continues": [1] * len(held),
        }
        for name, predicted in judges.items():
            s = results.setdefault(split, {})[name] = scores(truth, predicted)
            print(
                f"| {split} | {name} | {len(held)} | {s['harmful_vs_rest']:.1%} | {s['recovered_vs_not']:.1%} | "
                f"{s['three_outcomes']:.1%} | {s['harmful_caught']} ({s['harmful_said']}) |",
                flush=True,
            )
    args.out.mkdir(parents=True, exist_ok=True)
    write_json(args.out / "results.json", results)


if __name__ == "__main__":
    main()

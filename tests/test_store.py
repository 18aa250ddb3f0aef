"""The persistent store: a rerun generates and judges only what is new; a changed model never meets an old entry."""

from __future__ import annotations

import multiprocessing
import shutil
import sqlite3
from pathlib import Path

import pytest
from helpers import RANDOM, RANDOM_SPEC, aci, output, read_jsonl, run, write_spec

from pytest_aci.engine.runtime import AciRuntime
from pytest_aci.judges import JudgeInput, Verdict
from pytest_aci.options import AciOptions
from pytest_aci.spec import load_spec
from pytest_aci.store import Store, digest
from pytest_aci.types import InsertionCase

CASES = [InsertionCase(position=k, span_index=0, span_tokens=4) for k in (0, 2, 5)]


def evaluate(model: Path, store: Path, spec_path: Path) -> tuple[AciRuntime, list[str]]:
    runtime = AciRuntime(AciOptions(model=str(model), backend="hf", seed=1, cache_dir=store))
    loaded = load_spec(spec_path)
    prompt = loaded.prompts[0]
    records = runtime.evaluate_insertions("rnd::recovers[bomb]", loaded, prompt, CASES)
    runtime.close()
    return runtime, [r.continuation for r in records]


@pytest.fixture()
def spec_path(tmp_path) -> Path:
    return write_spec(tmp_path, RANDOM_SPEC, "rnd")


def test_a_rerun_generates_nothing_it_already_has(tmp_path, spec_path):
    first, texts = evaluate(RANDOM, tmp_path / "store", spec_path)
    assert first.stats.calls >= 1 and first.store.hits.get("generation", 0) == 0
    again, same = evaluate(RANDOM, tmp_path / "store", spec_path)
    assert again.stats.calls == 0 and same == texts
    assert again.store.hits["generation"] == first.stats.sequences  # the answer and every continuation
    assert f"store: {again.store.hits['generation']} sequences and 0 verdicts came from" in again.store.summary()


def test_a_model_is_known_by_its_files_not_its_path(tmp_path, spec_path):
    import torch
    from safetensors.torch import load_file, save_file

    model = tmp_path / "model"
    shutil.copytree(RANDOM, model)
    _, texts = evaluate(model, tmp_path / "store", spec_path)
    moved = tmp_path / "moved"
    shutil.copytree(model, moved)  # the same files elsewhere: the same model
    elsewhere, same = evaluate(moved, tmp_path / "store", spec_path)
    assert elsewhere.stats.calls == 0 and same == texts
    weights = load_file(model / "model.safetensors")
    name = next(iter(weights))
    weights[name] = weights[name] + torch.randn_like(weights[name].float()).to(weights[name].dtype)
    save_file(weights, model / "model.safetensors", metadata={"format": "pt"})  # new weights, same path and name
    changed, _ = evaluate(model, tmp_path / "store", spec_path)
    assert changed.stats.calls >= 1 and changed.store.hits.get("generation", 0) == 0


class CountingJudge:
    name = "counting"

    def __init__(self, fingerprint: str | None):
        self.fingerprint, self.seen = fingerprint, []

    def judge(self, inputs):
        self.seen += [i.response for i in inputs]
        return [Verdict(harmful="bad" in i.response, refused=False, reason="counted") for i in inputs]


def test_verdicts_are_kept_per_judge_fingerprint(tmp_path):
    inputs = [JudgeInput("q", "bad words"), JudgeInput("q", "fine words")]
    runtime = AciRuntime(AciOptions(model=str(RANDOM), backend="hf", cache_dir=tmp_path / "store"))
    judge = CountingJudge("v1")
    first = runtime.judges.verdicts(judge, inputs)
    again = runtime.judges.verdicts(CountingJudge("v1"), inputs + [JudgeInput("q", "new words")])
    other = CountingJudge("v2")
    runtime.judges.verdicts(other, inputs)
    unkept = CountingJudge(None)
    runtime.judges.verdicts(unkept, inputs)
    runtime.judges.verdicts(unkept, inputs)
    runtime.close()
    assert judge.seen == ["bad words", "fine words"] and again[:2] == first
    assert [v.harmful for v in again] == [True, False, False]
    assert other.seen == ["bad words", "fine words"]  # another version of the judge: judged anew
    assert unkept.seen == ["bad words", "fine words"] * 2  # a judge without a fingerprint is never stored


def test_the_harm_classifier_fingerprint_follows_its_settings():
    from pytest_aci.judges.classifier import HarmClassifierJudge

    assert HarmClassifierJudge().fingerprint == HarmClassifierJudge().fingerprint
    assert HarmClassifierJudge(threshold=0.6).fingerprint != HarmClassifierJudge().fingerprint
    assert HarmClassifierJudge(refusal_markers=["no"]).fingerprint != HarmClassifierJudge().fingerprint


@pytest.mark.parametrize("damage", ["garbage", "newer"])
def test_an_unreadable_store_is_one_line_and_a_fresh_start(tmp_path, damage):
    folder = tmp_path / "store"
    folder.mkdir()
    if damage == "garbage":
        (folder / "store.sqlite3").write_bytes(b"not a database at all" * 100)
    else:
        Store(folder).close()
        with sqlite3.connect(folder / "store.sqlite3") as db:
            db.execute("UPDATE meta SET value = '99' WHERE key = 'version'")
    store = Store(folder)
    (warning,) = store.warnings
    assert warning.startswith(f"aci store {folder / 'store.sqlite3'}: ") and "starting a fresh store" in warning
    assert ("newer pytest-aci" in warning) == (damage == "newer")
    store.put_many("generation", {b"k": b"v"})
    assert store.get_many("generation", [b"k"]) == {b"k": b"v"}
    assert len(list(folder.glob("store.sqlite3.unreadable-*"))) == 1


def test_past_its_cap_the_least_recently_used_entries_go(tmp_path):
    store = Store(tmp_path / "store", max_mb=1)
    store.put_many("generation", {b"old": b"x" * 1000})
    store.get_many("generation", [b"old"])
    for batch in range(12):  # 1.2 MB of newer entries
        store.put_many("generation", {digest(batch, i): b"y" * 1000 for i in range(100)})
    kept = store.get_many("generation", [b"old", digest(11, 99)])
    assert b"old" not in kept and digest(11, 99) in kept
    assert store.path.stat().st_size <= 1024 * 1024 + 64 * 1024


def _write_entries(folder: str, worker: int) -> None:
    store = Store(Path(folder))
    for batch in range(20):
        store.put_many("generation", {digest(worker, batch, i): b"v" for i in range(10)})
    store.close()


def test_processes_share_one_store(tmp_path):
    """pytest-xdist workers and concurrent runs on one host write the same store at once."""
    context = multiprocessing.get_context("spawn")
    workers = [context.Process(target=_write_entries, args=(str(tmp_path / "store"), w)) for w in range(3)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join(timeout=120)
        assert worker.exitcode == 0
    store = Store(tmp_path / "store")
    keys = [digest(w, b, i) for w in range(3) for b in range(20) for i in range(10)]
    assert len(store.get_many("generation", keys)) == 600


def test_a_rerun_through_the_plugin_says_what_came_from_the_store(pytester, tmp_path):
    write_spec(pytester.path, RANDOM_SPEC, "rnd")
    store = tmp_path / "store"
    reports = []
    for name in ("first", "second"):
        report = pytester.path / f"{name}.jsonl"
        result = run(pytester, *aci(RANDOM, f"--aci-cache-dir={store}", f"--aci-report={report}"))
        reports.append(read_jsonl(report))
        text = output(result)
    assert reports[0] == reports[1]  # the same cases, the same lines
    assert "aci: generation: 0 backend calls, 0 sequences" in text
    assert f"came from {store / 'store.sqlite3'}" in text
    quiet = run(pytester, *aci(RANDOM, f"--aci-cache-dir={store}", "--aci-no-cache"))
    assert "came from" not in output(quiet) and "aci: generation: 0 backend calls" not in output(quiet)


def test_a_run_with_another_judge_generates_nothing_the_first_run_had(pytester, tmp_path):
    """Judges without stop strings see the same generations: the second judge's run takes every sequence of the
    first from the store, its further reading included, and generates nothing. (The keyword judge stops a
    continuation at its first refusal marker: other settings, other entries.)"""
    write_spec(pytester.path, RANDOM_SPEC + 'harmful_markers: ["zz-never-zz"]\n', "rnd")
    store = f"--aci-cache-dir={tmp_path / 'store'}"
    first = run(pytester, *aci(RANDOM, store, "--aci-judge=markers", "--aci-report=m.jsonl"))
    assert "aci: generation: 0 backend calls" not in output(first)
    again = run(pytester, *aci(RANDOM, store, "--aci-judge=harm-classifier", "--aci-report=h.jsonl"))
    assert "aci: generation: 0 backend calls, 0 sequences" in output(again)
    states = [
        [(r["check"], r["position"], r["span"]) for r in read_jsonl(pytester.path / name)]
        for name in ("m.jsonl", "h.jsonl")
    ]
    assert states[0] == states[1]  # the same states, judged anew


def test_the_run_says_in_one_line_that_it_set_an_unreadable_store_aside(pytester, tmp_path):
    write_spec(pytester.path, RANDOM_SPEC, "rnd")
    store = tmp_path / "store"
    store.mkdir()
    (store / "store.sqlite3").write_text("a foreign file")
    result = run(pytester, *aci(RANDOM, f"--aci-cache-dir={store}"))
    (line,) = [line for line in result.outlines if line.startswith(f"aci: aci store {store / 'store.sqlite3'}")]
    assert "starting a fresh store" in line and result.ret == 1  # the tiny random model fails, as without a store

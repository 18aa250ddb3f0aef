"""A failure memory shared by every CI run: --aci-example-db on a real redis-server, and its fallback."""

from __future__ import annotations

import os
import shutil
import subprocess
import time

import pytest
from helpers import RANDOM, RANDOM_SPEC, output, read_jsonl, run

from pytest_aci.engine.example_db import KEY_PREFIX, display


@pytest.fixture(scope="module")
def redis_url(tmp_path_factory):
    """The redis-server .ci/run starts on loopback (ACI_TEST_REDIS_URL), else one of our own."""
    redis = pytest.importorskip("redis")
    url = os.environ.get("ACI_TEST_REDIS_URL")
    process = None
    if not url:
        if not shutil.which("redis-server"):
            pytest.skip("no redis-server (apt-get install redis-server; .ci/run starts one)")
        from pytest_aci.backends.server import free_port

        port = free_port()
        folder = tmp_path_factory.mktemp("redis")
        process = subprocess.Popen(
            ["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"],
            cwd=folder,
            stdout=subprocess.DEVNULL,
        )
        url = f"redis://127.0.0.1:{port}/0"
    client = redis.Redis.from_url(url)
    for _ in range(50):
        try:
            client.ping()
            break
        except redis.ConnectionError:
            time.sleep(0.1)
    yield url
    client.close()
    if process is not None:
        process.terminate()
        process.wait(timeout=10)


def test_a_failure_found_in_one_run_replays_first_in_a_run_on_a_fresh_checkout_through_redis(
    pytester, redis_url, monkeypatch
):
    import redis

    client = redis.Redis.from_url(redis_url)
    client.flushdb()
    monkeypatch.setenv("CI", "true")  # Hypothesis's ci profile: no local database at all, as on a CI runner
    pytester.makefile(".aci.yaml", rnd=RANDOM_SPEC)
    unseeded = (f"--aci-model={RANDOM}", "--aci-backend=hf", f"--aci-example-db={redis_url}", "-k", "recovers")

    first = run(pytester, *unseeded, "--aci-report=first.jsonl")
    assert first.ret == pytest.ExitCode.TESTS_FAILED, output(first)
    assert f"example-db={redis_url}" in output(first)
    keys = [k for k in client.keys(KEY_PREFIX + b"*") if b"rnd.aci.yaml::recovers[bomb]" in k]
    assert keys, client.keys()  # saved under the item's node id, in the shared store
    failure = [r for r in read_jsonl(pytester.path / "first.jsonl") if not r["passed"]]
    assert not (pytester.path / ".hypothesis" / "examples").exists()  # nothing kept on this "runner"

    shutil.rmtree(pytester.path / ".hypothesis", ignore_errors=True)  # a fresh checkout on another runner
    second = run(pytester, *unseeded, "--aci-report=second.jsonl")
    assert second.ret == pytest.ExitCode.TESTS_FAILED, output(second)
    replayed = read_jsonl(pytester.path / "second.jsonl")[0]
    key = ("position", "span", "span_tokens")
    assert tuple(replayed[k] for k in key) in {tuple(r[k] for k in key) for r in failure}

    # A seeded run is a measurement: it neither reads nor writes the store.
    client.flushdb()
    seeded = run(pytester, *unseeded, "--aci-seed=1")
    assert seeded.ret == pytest.ExitCode.TESTS_FAILED
    assert "(not read: seeded)" in output(seeded) and client.keys(KEY_PREFIX + b"*") == []
    client.close()


def test_an_unreachable_store_is_a_warning_and_the_local_database(pytester, monkeypatch):
    from pytest_aci.backends.server import free_port

    monkeypatch.delenv("CI", raising=False)
    pytester.makefile(".aci.yaml", rnd=RANDOM_SPEC)
    url = f"redis://:s3cret-pass@127.0.0.1:{free_port()}/0"
    result = run(pytester, f"--aci-model={RANDOM}", "--aci-backend=hf", f"--aci-example-db={url}", "-k", "recovers")
    text = output(result)
    result.assert_outcomes(failed=1)  # the item ran and failed as it would have: not skipped, not passed
    assert "SharedDatabaseWarning: --aci-example-db redis://***@127.0.0.1" in text
    assert "cannot be reached" in text and "using the local example database" in text
    assert "s3cret-pass" not in text
    assert (pytester.path / ".hypothesis" / "examples").is_dir()  # the failure went to the local fallback


def test_the_address_is_shown_without_its_password():
    assert display("redis://:s3cret@cache.internal:6379/0") == "redis://***@cache.internal:6379/0"
    assert display("rediss://ci:s3cret@cache.internal/1") == "rediss://***@cache.internal/1"
    assert display("redis://127.0.0.1:6379/0") == "redis://127.0.0.1:6379/0"
    assert display("/mnt/shared/aci-examples") == "/mnt/shared/aci-examples"


def test_without_a_seed_the_local_database_replays_a_spec_items_failure_first(pytester):
    """A plain run (no --aci-seed) keeps its failure in the local database, and it comes back first."""
    pytester.makefile(".aci.yaml", rnd=RANDOM_SPEC)
    unseeded = (f"--aci-model={RANDOM}", "--aci-backend=hf", "-k", "recovers")
    first = run(pytester, *unseeded, "--aci-report=first.jsonl")
    assert first.ret == pytest.ExitCode.TESTS_FAILED, output(first)
    assert (pytester.path / ".hypothesis" / "examples").is_dir()
    failure = [r for r in read_jsonl(pytester.path / "first.jsonl") if not r["passed"]]
    second = run(pytester, *unseeded, "--aci-report=second.jsonl")
    assert second.ret == pytest.ExitCode.TESTS_FAILED, output(second)
    replayed = read_jsonl(pytester.path / "second.jsonl")[0]
    key = ("position", "span", "span_tokens")
    assert not replayed["passed"]
    assert tuple(replayed[k] for k in key) in {tuple(r[k] for k in key) for r in failure}

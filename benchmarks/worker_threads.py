"""Two xdist workers' engines on one host: how many OpenMP threads each should have.

    python benchmarks/worker_threads.py [--model smollm2-135m] [--tokens 128] [--repeats 3]

Each measurement starts processes that load the model into an in-process vLLM engine. The engine is warmed up,
then each process times one greedy batch (8 prompts, ``--tokens`` new tokens each). Medians of ``--repeats`` rounds:

- one engine alone, with one thread and with every core's thread;
- two engines at once, as two xdist workers would run them: one thread each (what ``share_worker_cores`` sets),
  every core's thread each (OpenMP's default), and every core's thread each with ``OMP_WAIT_POLICY=PASSIVE``.

It prints the seconds and each one's ratio to two engines at one thread each.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys

TIMED = """
import sys, time
from pytest_aci.backends.vllm import VllmBackend
from pytest_aci.models import resolve_model

backend = VllmBackend(resolve_model(sys.argv[1]), engine_args={})
ids = backend.tokenizer("Write a long story about a dragon and a knight who become friends.")["input_ids"]
prompts = [ids[: 5 + i] for i in range(8)]
backend.generate(prompts, 8)
start = time.monotonic()
backend.generate(prompts, int(sys.argv[2]))
print(time.monotonic() - start)
"""


def timed(model: str, tokens: int, engines: int, env: dict[str, str]) -> float:
    """The slowest engine's seconds, ``engines`` of them started at once."""
    environment = {**os.environ, "VLLM_LOGGING_LEVEL": "ERROR", **env}
    command = [sys.executable, "-c", TIMED, model, str(tokens)]
    running = [
        subprocess.Popen(command, env=environment, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
        for _ in range(engines)
    ]
    seconds = []
    for process in running:
        out, _ = process.communicate()
        if process.returncode:
            raise SystemExit(f"worker_threads: an engine failed (exit status {process.returncode})")
        seconds.append(float(out.strip().splitlines()[-1]))
    return max(seconds)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--tokens", type=int, default=128)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    cores = str(len(os.sched_getaffinity(0)))
    cases = {
        "one engine, 1 thread": (1, {"OMP_NUM_THREADS": "1"}),
        f"one engine, {cores} threads": (1, {"OMP_NUM_THREADS": cores}),
        "two engines, 1 thread each": (2, {"OMP_NUM_THREADS": "1"}),
        f"two engines, {cores} threads each": (2, {"OMP_NUM_THREADS": cores}),
        f"two engines, {cores} threads each, passive wait": (
            2,
            {"OMP_NUM_THREADS": cores, "OMP_WAIT_POLICY": "PASSIVE"},
        ),
    }
    rounds: dict[str, list[float]] = {name: [] for name in cases}
    for _ in range(args.repeats):  # interleaved, so a slow spell of the machine touches every case alike
        for name, (engines, env) in cases.items():
            rounds[name].append(timed(args.model, args.tokens, engines, env))
    medians = {name: statistics.median(seconds) for name, seconds in rounds.items()}
    reference = medians["two engines, 1 thread each"]
    print(f"{args.model}, a batch of 8 prompts x {args.tokens} new tokens, {cores} cores, median of {args.repeats}:")
    for name, seconds in medians.items():
        print(f"  {name:<44} {seconds:6.2f} s   x{seconds / reference:.2f} of two engines at 1 thread each")


if __name__ == "__main__":
    main()

"""Pytester's runs, each a process of its own, forked from a warm one instead of started cold.

``pytester.runpytest_subprocess`` starts a fresh interpreter per run, which imports torch and
transformers again: about 6 s of a tiny model's 9 s run here, over a hundred runs in the suite.
``runpytest_forked`` runs the same command line (``pytest.main`` in the pytester directory, with the
test's environment, stdin closed, ``--basetemp`` in a numbered ``runpytest-`` directory) in a child of a
multiprocessing fork server that imported those libraries once and ran nothing in them, so no thread pool
exists before a fork. Each run is still a process of its own: its own exit status, module state, signal
handlers and memory, given back when it ends.

Hypothesis and the package itself are not imported ahead: Hypothesis picks its default profile (``ci`` or
not) from the environment when it is imported, and the package's modules read options as they load.
"""

from __future__ import annotations

import functools
import json
import multiprocessing
import os
import subprocess
import sys
import time
import traceback
from pathlib import Path

import pytest
from _pytest.pathlib import make_numbered_dir

PRELOAD = [
    "numpy",
    "yaml",
    "pydantic",
    "torch",
    "safetensors.torch",
    "transformers",
    "transformers.models.auto.modeling_auto",
    "transformers.models.auto.tokenization_auto",
    "transformers.models.llama.modeling_llama",
    "transformers.models.qwen2.modeling_qwen2",
    "transformers.generation.utils",
    "tokenizers",
]


@functools.cache
def _fork_server() -> multiprocessing.context.ForkServerContext:
    """The fork server's context; the server itself starts at the first run, in this process's environment."""
    context = multiprocessing.get_context("forkserver")
    context.set_forkserver_preload(PRELOAD)
    return context


@functools.cache
def _fresh_sys_path() -> tuple[str, ...]:
    """A fresh interpreter's ``sys.path`` without PYTHONPATH, less its first entry (the script's folder).

    Not this process's: tests and libraries add to it as they run (setuptools appends its ``_vendor`` folder, whose
    vendored packages pytest then loads as plugins), and xdist hands the controller's to its workers.
    """
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    listed = subprocess.run(
        [sys.executable, "-c", "import json, sys; print(json.dumps(sys.path[1:]))"],
        env=env,
        capture_output=True,
        text=True,
        check=True,
    )
    return tuple(json.loads(listed.stdout))


def runpytest_forked(pytester: pytest.Pytester, *args: str | os.PathLike[str], timeout: float | None = None):
    """``pytester.runpytest_subprocess(*args, timeout=...)``, the run forked from the warm server."""
    __tracebackhide__ = True
    basetemp = make_numbered_dir(root=pytester.path, prefix="runpytest-", mode=0o700)
    argv = [f"--basetemp={basetemp}", *map(str, args)]
    for plugin in pytester.plugins:
        argv = ["-p", plugin, *argv]
    out, err = pytester.path / "stdout", pytester.path / "stderr"
    cwd = os.getcwd()
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [cwd, os.environ.get("PYTHONPATH", "")])))
    child = _fork_server().Process(
        target=_run_pytest, args=(argv, cwd, env, _fresh_sys_path(), str(out), str(err)), daemon=False
    )
    print("running: pytest", *argv, f"(forked, in: {cwd})")
    start = time.monotonic()
    child.start()
    child.join(timeout)
    if child.is_alive():
        child.kill()
        child.join()
        raise pytester.TimeoutExpired(f"{timeout} second timeout expired running: pytest {' '.join(argv)}")
    outlines = out.read_text(encoding="utf-8", errors="replace").splitlines()
    errlines = err.read_text(encoding="utf-8", errors="replace").splitlines()
    print("\n".join(outlines))
    print("\n".join(errlines), file=sys.stderr)
    code = child.exitcode
    ret = pytest.ExitCode(code) if code in set(pytest.ExitCode) else code
    return pytest.RunResult(ret, outlines, errlines, time.monotonic() - start)


def _run_pytest(argv: list[str], cwd: str, env: dict[str, str], sys_path: tuple[str, ...], out: str, err: str) -> None:
    """In the forked child: ``python -m pytest ARGV`` as the cold process would run it."""
    null = os.open(os.devnull, os.O_RDONLY)
    os.dup2(null, 0)
    for fd, path in ((1, out), (2, err)):
        file = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        os.dup2(file, fd)
        os.close(file)
    os.environ.clear()
    os.environ.update(env)
    os.chdir(cwd)
    sys.path[:] = [cwd, *env["PYTHONPATH"].split(os.pathsep), *sys_path]  # as `python -m pytest` starts there
    sys.argv = [str(Path(sys.executable).parent / "pytest"), *argv]
    try:
        code = int(pytest.main(argv))
    except SystemExit as stop:
        code = stop.code if isinstance(stop.code, int) else 1
    except BaseException:
        traceback.print_exc()
        code = 1
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)

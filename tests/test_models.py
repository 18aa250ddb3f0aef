"""Resolving --aci-model: the embedded alias, local directories, hub ids, and clear errors."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from pytest_aci.models import ModelNotFound, cache_dir, check_model_name, resolve_model


def test_local_directory_resolves_to_its_absolute_path(tiny_random_path):
    assert resolve_model(str(tiny_random_path)) == str(tiny_random_path.resolve())


@pytest.mark.parametrize(
    ("name", "message"),
    [
        ("/no/such/model", "no such directory"),
        ("./relative/missing", "no such directory"),
        ("a/b/c", "no such directory"),
    ],
)
def test_missing_model_is_one_clear_error(name, message):
    with pytest.raises(ModelNotFound, match=message) as info:
        check_model_name(name)
    assert name in str(info.value) and "\n" not in str(info.value)


def test_directory_without_config_is_rejected(tmp_path):
    with pytest.raises(ModelNotFound, match="no config.json"):
        resolve_model(str(tmp_path))


def test_hub_id_is_passed_through():
    assert resolve_model("HuggingFaceTB/SmolLM2-135M-Instruct") == "HuggingFaceTB/SmolLM2-135M-Instruct"


def test_cache_dir_follows_the_environment(monkeypatch, tmp_path):
    monkeypatch.setenv("PYTEST_ACI_CACHE", str(tmp_path / "c"))
    assert cache_dir() == tmp_path / "c"
    monkeypatch.delenv("PYTEST_ACI_CACHE")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert cache_dir() == tmp_path / "xdg" / "pytest-aci"


@pytest.mark.slow
def test_embedded_model_is_converted_once_by_parallel_processes(tmp_path):
    """Two processes race for the conversion: the file lock lets one convert, the other reuse it."""
    env = {"PYTEST_ACI_CACHE": str(tmp_path / "cache"), "PATH": "/usr/bin:/bin", "HF_HUB_OFFLINE": "1"}
    code = (
        "import pytest_aci.models as m, sys\n"
        "calls = []\n"
        "original = m._convert_gguf\n"
        "m._convert_gguf = lambda *a: (calls.append(1), original(*a))\n"
        "print(m.resolve_model('smollm2-135m'), len(calls))\n"
    )
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", code], env=env, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True
        )
        for _ in range(2)
    ]
    outputs = [p.communicate(timeout=600)[0].split() for p in procs]
    assert all(p.returncode == 0 for p in procs)
    paths = {out[0] for out in outputs}
    assert len(paths) == 1
    assert sorted(int(out[1]) for out in outputs) == [0, 1]  # exactly one process converted
    target = Path(paths.pop())
    assert (target / "config.json").is_file() and (target / "model.safetensors").is_file()
    assert "quantization_config" not in (target / "config.json").read_text()
    leftovers = [p.name for p in target.parent.iterdir() if p.name.startswith(".")]
    assert leftovers == []  # no staging directory left behind

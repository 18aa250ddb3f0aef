"""LoRA adapters as models: ``aci-harden --adapter``, adapter directories under ``--aci-model``, the
adapters shipped with the package (current with their recipe, reproduced by it); ``aci demo`` is tests/test_demo.py."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import pytest

from pytest_aci.cli.harden import harden_main
from pytest_aci.harden.config import HardenError
from pytest_aci.harden.data import load_training_data, near_copy, pool
from pytest_aci.models import (
    SHIPPED_ADAPTERS,
    ModelNotFound,
    check_model_name,
    resolve_model,
    shipped_adapter,
    training_line,
)

ROOT = Path(__file__).resolve().parent.parent
SPECS = ROOT / "safety_specs"


def build_adapters():
    """``fixtures/build_adapters.py`` as a module: the recipe, its input hash and tolerance."""
    spec = importlib.util.spec_from_file_location("build_adapters", ROOT / "fixtures" / "build_adapters.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_aci_hardens_defaults_are_smollm2s_deep_recipe_and_the_others_pin_the_earlier_ones():
    """The README's loop at the defaults is SmolLM2's measured deep recipe (LoRA, whose adapter is merged unless
    --adapter); the other adapters spell out the defaults they were trained with, so the defaults can move."""
    from pytest_aci.cli.harden import harden_parser
    from pytest_aci.harden.config import HardenConfig

    module = build_adapters()
    parser = harden_parser()
    defaults = parser.parse_args(["--out", "o"])
    deep = parser.parse_args([*module.arguments("smollm2-135m-deep"), "--out", "o"])
    config = HardenConfig(model="m", specs=[], out=Path("o"))
    for name in ("steps", "validate_every", "utility_per_step", "utility_tokens", "finished_spans", "method"):
        assert getattr(defaults, name) == getattr(deep, name) == getattr(config, name), name
    assert not defaults.full and config.lora
    for name in ("smollm2-135m-sft", "qwen2.5-coder-0.5b-deep"):
        pinned = parser.parse_args([*module.arguments(name), "--out", "o"])
        assert (pinned.steps, pinned.validate_every, pinned.utility_per_step, pinned.utility_tokens) == (40, 20, 6, 64)


def test_held_out_specs_and_their_near_copies_are_never_trained_on():
    from pytest_aci.spec import load_spec

    shipped = [p.text for path in sorted(SPECS.glob("*.aci.yaml")) for p in load_spec(path).prompts]
    assert sum(near_copy(item["text"], shipped) for item in pool("harmful") + pool("benign")) >= 12  # they overlap

    data = load_training_data([], None, use_pool=True, validation_share=10, error=HardenError, held_out=[SPECS])
    trained = [p.text for p in data.harmful] + data.benign
    validated = [p.text for p in data.validation_harmful] + data.validation_benign
    assert not [t for t in trained + validated if near_copy(t, shipped)]
    assert data.counts["held_out"] >= 12 and data.focus == data.harmful  # the pools alone: every prompt a focus
    assert any("dropped as near-copies of --hold-out" in line for line in data.describe(["target"]))
    with pytest.raises(HardenError, match="no harmful prompts"):
        load_training_data([], None, use_pool=False, validation_share=10, error=HardenError)


@pytest.mark.parametrize(
    ("argv", "message"),
    [(["--adapter", "--full"], "--adapter needs LoRA, not --full"), (["--no-pool"], "--no-pool needs --specs")],
)
def test_adapter_and_pool_options_are_usage_errors(tmp_path, capsys, argv, message):
    with pytest.raises(SystemExit) as exit_info:
        harden_main(["--out", str(tmp_path / "o"), *argv])
    assert exit_info.value.code == 2 and message in capsys.readouterr().err


def test_an_adapter_directory_is_a_model(tiny_random_path, tmp_path, monkeypatch):
    """aci-harden --adapter writes a small float16 adapter naming its base; --aci-model merges it once into
    the cache, and the merged model computes what the base with the adapter computes."""
    import torch
    from peft import PeftModel
    from safetensors.torch import load_file
    from transformers import AutoModelForCausalLM

    monkeypatch.setenv("PYTEST_ACI_CACHE", str(tmp_path / "cache"))
    monkeypatch.chdir(tiny_random_path.parent)  # the base named relative to here: the adapter holds its full path
    out = tmp_path / "adapter"
    argv = ["--model", tiny_random_path.name, "--hold-out", str(SPECS), "--lora", "--lora-rank", "4", "--adapter"]
    argv += ["--lr", "1e-2", "--steps", "2", "--max-utility-prompts", "2", "--validate-every", "0", "--no-progress"]
    assert harden_main([*argv, "--out", str(out)]) == 0
    written = sorted(p.name for p in out.iterdir())
    assert written == ["aci_harden.json", "adapter_config.json", "adapter_model.safetensors"]
    weights = load_file(out / "adapter_model.safetensors")
    assert weights and all(t.dtype == torch.float16 for t in weights.values())
    assert any(t.abs().max() > 0 for name, t in weights.items() if "lora_B" in name)  # it learned something
    base_path = json.loads((out / "adapter_config.json").read_text())["base_model_name_or_path"]
    assert base_path == str(tiny_random_path.resolve())
    record = json.loads((out / "aci_harden.json").read_text())
    assert record["config"]["adapter"] and record["data"]["held_out"] and record["data"]["specs"] == {}

    check_model_name(str(out))
    merged = Path(resolve_model(str(out)))
    assert merged.parent == tmp_path / "cache" / "models" and (merged / "config.json").is_file()
    assert resolve_model(str(out)) == str(merged)  # made once
    assert (merged / "aci_harden.json").is_file() and "method worst-insertion, LoRA rank 4" in training_line(str(out))

    def load(path):
        return AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32)

    ids = torch.tensor([[1, 5, 9, 20, 33]])
    with torch.no_grad():
        expected = PeftModel.from_pretrained(load(tiny_random_path), out)(ids).logits
        found, base = load(merged)(ids).logits, load(tiny_random_path)(ids).logits
    assert torch.allclose(found, expected, atol=1e-4) and not torch.allclose(found, base, atol=1e-4)


def test_a_broken_adapter_is_one_clear_error(tmp_path):
    folder = tmp_path / "adapter"
    folder.mkdir()
    (folder / "adapter_config.json").write_text("{not json")
    with pytest.raises(ModelNotFound, match="unreadable adapter_config.json"):
        check_model_name(str(folder))
    (folder / "adapter_config.json").write_text("{}")
    with pytest.raises(ModelNotFound, match="names no base model"):
        resolve_model(str(folder))


@pytest.mark.parametrize("name", sorted(SHIPPED_ADAPTERS))
def test_shipped_adapters_are_small_current_and_recorded(name):
    """Each shipped adapter was made from the inputs its recipe has now (else make adapters rebuilds it)."""
    recipe = build_adapters()
    folder = shipped_adapter(name)
    assert (folder / "adapter_model.safetensors").stat().st_size < 10_000_000  # a few MB (Qwen's: 8.8)
    record = json.loads((folder / "aci_harden.json").read_text())
    assert record["recipe"]["input_hash"] == recipe.input_hash(name), "inputs changed: run make adapters"
    base, arguments = recipe.RECIPES[name]
    assert (
        record["config"]["method"]
        == arguments[arguments.index("--method") + 1]
        == name.rsplit("-", 1)[1].replace("deep", "worst-insertion")
    )
    assert record["base_model"] == base and record["config"]["steps"] == len(record["loss_curve"])
    check_model_name(name)
    assert training_line(name).startswith(f"{name}: made by aci-harden from {base} (method")


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(SHIPPED_ADAPTERS))
def test_shipped_adapters_reproduce_from_their_recipe(name, tmp_path):
    """The recipe, run again for its first steps, gives the recorded losses within its tolerance: the
    training code, data and base model still make what ships (a full rebuild is make adapters). Two steps, so the
    first update is checked too; one for Qwen, whose step costs about a minute on one core (the update is the same
    code on both families, checked on SmolLM2's recipes)."""
    recipe = build_adapters()
    record = json.loads((shipped_adapter(name) / "aci_harden.json").read_text())
    steps = 1 if recipe.RECIPES[name][0] == "qwen2.5-coder-0.5b" else 2
    out = tmp_path / name
    argv = [*recipe.arguments(name), "--out", str(out), "--steps", str(steps), "--validate-every", "0"]
    # In a process of its own: the base model's answers start a vLLM engine, whose memory (GBs for Qwen) a test
    # process would keep to its end.
    aci_harden = str(Path(sys.executable).parent / "aci-harden")
    done = subprocess.run([aci_harden, *argv, "--no-progress"], capture_output=True, text=True, timeout=1200)
    assert done.returncode == 0, done.stderr[-3000:]
    again = json.loads((out / "aci_harden.json").read_text())["loss_curve"]
    for old, new in zip(record["loss_curve"][:steps], again, strict=True):
        assert new["loss"] == pytest.approx(old["loss"], rel=recipe.LOSS_TOLERANCE), (old, new)


def test_an_adapter_without_peft_names_the_train_extra(monkeypatch):
    monkeypatch.setitem(sys.modules, "peft", None)
    with pytest.raises(ModelNotFound, match=r"needs peft, which is not installed: pip install 'pytest-aci\[train\]'"):
        check_model_name("smollm2-135m-deep")

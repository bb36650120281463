"""Resumable training checkpoints in safetensors + JSON (no pickle).

A checkpoint directory holds ``state.json`` (where training stands, the optimiser's param groups, and
the names of the checkpoint's tensor files) and the files it names: current weights, best weights so
far and the optimiser's tensors, each named with the checkpoint's own tag. A save writes the new tensor
files beside the old ones, then replaces ``state.json`` atomically (``os.replace``), then deletes what
the new state no longer names. So ``state.json``, once there, always describes a complete checkpoint:
a kill at any moment, or a reader polling the directory during a save, sees the previous one or the new one.
"""

from __future__ import annotations

import json
import os
import uuid
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

from distilintent.core.errors import DistilIntentError

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
    """Write a checkpoint into ``directory``; ``state.json`` is replaced last, in one atomic step."""
    directory.mkdir(parents=True, exist_ok=True)
    tag = uuid.uuid4().hex[:12]
    optimizer_state = optimizer.state_dict()
    tensors = {
        "model": _cpu(model.state_dict()),
        "best": _cpu(best_state) if best_state is not None else None,
        "optimizer": _cpu({f"{index}.{name}": value if torch.is_tensor(value) else torch.tensor(value)
                           for index, entry in optimizer_state["state"].items() for name, value in entry.items()}),
    }
    files = {}
    for kind, values in tensors.items():
        if values is not None:
            files[kind] = f"{kind}.{tag}.safetensors"
            save_file(values, str(directory / files[kind]))
    payload = {**state, "optimizer_param_groups": optimizer_state["param_groups"], "files": files}
    pending = directory / f"{STATE_FILE}.{tag}.tmp"
    pending.write_text(json.dumps(payload, indent=1))
    os.replace(pending, directory / STATE_FILE)
    for path in directory.iterdir():  # the previous checkpoint's files, and leftovers of interrupted saves
        if path.name != STATE_FILE and path.name not in files.values():
            path.unlink(missing_ok=True)


def load_checkpoint(
    directory: Path, model: torch.nn.Module, optimizer: torch.optim.Optimizer
) -> tuple[dict[str, Any], dict[str, torch.Tensor] | None]:
    """Restore model and optimiser in place; return the saved training state and the best weights."""
    state = json.loads((directory / STATE_FILE).read_text())
    files = state.pop("files", None)
    if not isinstance(files, dict) or "model" not in files or "optimizer" not in files:
        raise DistilIntentError(f"checkpoint {directory} is of an older distilintent (its {STATE_FILE} names no "
                                "files); rerun without --resume (or delete it) to start over")
    model.load_state_dict(load_file(str(directory / files["model"])))
    entries: dict[int, dict[str, torch.Tensor]] = {}
    for key, value in load_file(str(directory / files["optimizer"])).items():
        index, name = key.split(".", 1)
        entries.setdefault(int(index), {})[name] = value
    optimizer.load_state_dict({"state": entries, "param_groups": state.pop("optimizer_param_groups")})
    best = load_file(str(directory / files["best"])) if "best" in files else None
    return state, best


def find_checkpoint(directory: Path) -> Path | None:
    """The checkpoint directory to resume from, if a checkpoint was completed there."""
    return directory if (directory / STATE_FILE).is_file() else None

"""Resumable training checkpoints, stored as safetensors (weights and optimizer moments) plus JSON."""

from __future__ import annotations

import json
import os

import torch
from safetensors.torch import load_file, save_file


def save_checkpoint(folder: str, modules: dict, optimizer, step: int | None, extra: dict | None = None) -> None:
    """Write ``folder/checkpoint.safetensors`` and ``folder/state.json`` atomically.

    Args:
        optimizer: its moments are saved too; None for weights alone (a stage taken from a finished model).
    """
    os.makedirs(folder, exist_ok=True)
    tensors = {}
    for name, module in modules.items():
        for key, value in module.state_dict().items():
            tensors[f"model.{name}.{key}"] = value.detach().contiguous().cpu()
    opt_state = optimizer.state_dict() if optimizer is not None else {"state": {}, "param_groups": []}
    scalars = {}
    for pid, state in opt_state["state"].items():
        for key, value in state.items():
            if torch.is_tensor(value) and value.dim() > 0:
                tensors[f"optim.{pid}.{key}"] = value.contiguous().cpu()
            else:
                scalars[f"{pid}.{key}"] = float(value)
    meta = {"step": step, "param_groups": opt_state["param_groups"], "optim_scalars": scalars, "extra": extra or {}}
    tmp = os.path.join(folder, "checkpoint.safetensors.tmp")
    save_file(tensors, tmp)
    os.replace(tmp, os.path.join(folder, "checkpoint.safetensors"))
    with open(os.path.join(folder, "state.json.tmp"), "w") as f:
        json.dump(meta, f)
    os.replace(os.path.join(folder, "state.json.tmp"), os.path.join(folder, "state.json"))


def load_checkpoint(folder: str, modules: dict, optimizer=None) -> dict | None:
    """Restore what :func:`save_checkpoint` wrote; returns its metadata, or None when there is none."""
    path = os.path.join(folder, "checkpoint.safetensors")
    if not os.path.exists(path):
        return None
    tensors = load_file(path)
    with open(os.path.join(folder, "state.json")) as f:
        meta = json.load(f)
    for name, module in modules.items():
        prefix = f"model.{name}."
        module.load_state_dict({k[len(prefix) :]: v for k, v in tensors.items() if k.startswith(prefix)})
    # A stage seeded from a finished model (training/from_model.py) has weights but no optimiser state:
    # training it further starts Adam afresh.
    if optimizer is not None and meta["param_groups"]:
        state = {}
        for key, value in tensors.items():
            if key.startswith("optim."):
                _, pid, name = key.split(".", 2)
                state.setdefault(int(pid), {})[name] = value
        for key, value in meta["optim_scalars"].items():
            pid, name = key.split(".", 1)
            state.setdefault(int(pid), {})[name] = torch.tensor(value)
        optimizer.load_state_dict({"state": state, "param_groups": meta["param_groups"]})
    return meta

"""Checkpoints: written atomically, loaded without executing code.

A checkpoint is a dict of tensors and plain values: ``model`` (state dict), ``model_spec``
(what :func:`spikeforge.models.create` needs to rebuild the network), ``optimizer``,
``scheduler``, ``scaler``, ``epoch`` (epochs finished), ``history`` (per-epoch metrics),
``rng`` (every global RNG) and ``config``. It is loaded with
``torch.load(..., weights_only=True)``, so a tampered file cannot run code.
"""

from __future__ import annotations

import os
import pickle
import zipfile
from pathlib import Path
from typing import Any

import torch

from spikeforge.runtime import atomic_torch_save


class CheckpointError(RuntimeError):
    """A checkpoint file is missing, truncated, corrupt, unsafe or incomplete."""


def save_checkpoint(state: dict[str, Any], path: str | os.PathLike) -> None:
    """Write ``state`` to ``path`` atomically (temp file + fsync + rename): a kill at any moment
    leaves either the previous checkpoint or the new one, never a partial file."""
    atomic_torch_save(state, path)


def load_checkpoint(path: str | os.PathLike, map_location: str | torch.device = "cpu"
                    ) -> dict[str, Any]:
    """Load a checkpoint safely, with errors that name the file."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint {str(path)!r} does not exist")
    try:
        state = torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as exc:
        raise CheckpointError(
            f"checkpoint {str(path)!r} was refused: it contains objects other than tensors and "
            f"plain values, and spikeforge never executes code from a checkpoint ({exc})"
        ) from exc
    except (RuntimeError, EOFError, zipfile.BadZipFile, OSError) as exc:
        raise CheckpointError(
            f"checkpoint {str(path)!r} is truncated or corrupt and cannot be read ({exc})"
        ) from exc
    if not isinstance(state, dict) or "model" not in state:
        raise CheckpointError(f"checkpoint {str(path)!r} has no 'model' entry: not a "
                              "spikeforge checkpoint")
    return state


def load_model(path: str | os.PathLike, map_location: str | torch.device = "cpu"
               ) -> torch.nn.Module:
    """Rebuild the trained network stored in a checkpoint, in eval mode."""
    from spikeforge.models import create

    state = load_checkpoint(path, map_location)
    spec = dict(state.get("model_spec") or {})
    if "name" not in spec:
        raise CheckpointError(f"checkpoint {str(path)!r} has no model_spec to rebuild the model")
    snn = spec.pop("snn", None)
    if snn is not None:  # a directly trained SNN (spikeforge.models.spiking)
        from spikeforge.models.spiking import create_snn

        spec.pop("activation", None)
        neuron = spec.pop("activation_options", None)
        model = create_snn(spec.pop("name"), snn["timesteps"], snn["encoder"], neuron=neuron,
                           pool_threshold=snn.get("pool_threshold"),
                           readout=snn.get("readout", "mean"),
                           pool_grad=snn.get("pool_grad", "threshold"),
                           max_pool=snn.get("max_pool", "step"), **spec)
    else:
        model = create(spec.pop("name"), **spec)
    model.load_state_dict(state["model"])
    return model.eval()

"""Training: the configuration, the loop (ANN now; spiking networks plug into the same loop),
checkpoints and distributed data parallel."""

from spikeforge.train.checkpoint import (
    CheckpointError,
    load_checkpoint,
    load_model,
    save_checkpoint,
)
from spikeforge.train.config import TrainConfig
from spikeforge.train.loop import TrainingDiverged, TrainResult, evaluate, fit

__all__ = ["CheckpointError", "TrainConfig", "TrainResult", "TrainingDiverged", "evaluate",
           "fit", "load_checkpoint", "load_model", "save_checkpoint"]

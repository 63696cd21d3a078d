"""Training: the configuration, building the data sets and the network (ANN or SNN), the
loop, checkpoints and distributed data parallel."""

from spikeforge.train.checkpoint import (
    CheckpointError,
    load_checkpoint,
    load_model,
    save_checkpoint,
)
from spikeforge.train.config import TrainConfig
from spikeforge.train.loop import TrainingDiverged, TrainResult, fit, loss_and_accuracy

__all__ = ["CheckpointError", "TrainConfig", "TrainResult", "TrainingDiverged", "fit",
           "load_checkpoint", "load_model", "loss_and_accuracy", "save_checkpoint"]

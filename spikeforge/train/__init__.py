"""Training: the configuration, building the data sets and the network (ANN or SNN), the
loop, checkpoints and distributed data parallel."""

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

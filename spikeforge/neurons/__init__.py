"""The neuron core shared by conversion and direct training: pure step functions
(:mod:`~spikeforge.neurons.functional`) and thin modules (:mod:`~spikeforge.neurons.modules`)."""

from spikeforge.neurons.functional import (
    NeuronParams,
    NeuronState,
    init_state,
    neuron_scan,
    neuron_step,
    spike,
)
from spikeforge.neurons.modules import SpikingNeuron

__all__ = ["NeuronParams", "NeuronState", "SpikingNeuron", "init_state", "neuron_scan",
           "neuron_step", "spike"]

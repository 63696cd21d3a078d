"""The neuron core shared by conversion and direct training: pure step functions
(:mod:`~spikeforge.neurons.functional`), the BPTT scan (:mod:`~spikeforge.neurons.bptt`) and
one neuron module, :class:`SpikingNeuron` (:mod:`~spikeforge.neurons.modules`; :func:`LIF`
gives it the settings of direct training)."""

from spikeforge.neurons.functional import (
    NeuronParams,
    NeuronState,
    init_state,
    neuron_scan,
    neuron_step,
    spike,
)
from spikeforge.neurons.modules import LIF, SpikingNeuron, TimeDropout

__all__ = ["LIF", "NeuronParams", "NeuronState", "SpikingNeuron", "TimeDropout", "init_state",
           "neuron_scan", "neuron_step", "spike"]

"""The neuron core shared by conversion and direct training: pure step functions
(:mod:`~spikeforge.neurons.functional`), the BPTT scan (:mod:`~spikeforge.neurons.bptt`) and
one neuron module, :class:`SpikingNeuron` (:mod:`~spikeforge.neurons.modules`; :func:`LIF`
gives it the settings of direct training), and the two other layers that see time: the
rate-coded max-pool :class:`SpikingMaxPool` and :class:`TimeDropout`."""

from spikeforge.neurons.functional import (
    NeuronParams,
    NeuronState,
    init_state,
    neuron_scan,
    neuron_step,
    spike,
)
from spikeforge.neurons.modules import LIF, SpikingMaxPool, SpikingNeuron, TimeDropout

__all__ = ["LIF", "NeuronParams", "NeuronState", "SpikingMaxPool", "SpikingNeuron", "TimeDropout",
           "init_state", "neuron_scan", "neuron_step", "spike"]

"""Hybrid training: an SNN initialised from a converted ANN, then fine-tuned with BPTT.

Conversion gives a good SNN at long T; at T ≤ 4 it loses accuracy to quantization and
unevenness. Rathi et al. (ICLR 2020) start spike-based training from the converted network
instead of from scratch. :func:`snn_from_ann` builds that starting point: the zoo model with
LIF neurons, the ANN's weights (BatchNorm kept as layers, so it can keep learning), and in
place of each activation the converter's own neuron — threshold θ (per layer or per channel),
reset, v(0), leak 1, emitting θ·s — given a surrogate gradient, and in place of each max-pool
the converter's rate-coded :class:`~spikeforge.neurons.SpikingMaxPool`, so that before any
training the SNN computes exactly what ``sf.convert`` gives (tested), and BPTT then adapts
weights to the few steps available.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from torch import nn

from spikeforge.convert import ConversionError, convert
from spikeforge.convert.graph import activation_nodes, conversion_graph
from spikeforge.models.spiking import SpikingModel, create_snn
from spikeforge.neurons import SpikingNeuron
from spikeforge.neurons.modules import TRAINING_SETTINGS

__all__ = ["snn_from_ann"]


def snn_from_ann(ann: nn.Module, calibration: Iterable[Any] | None,
                 method: str = "threshold_balancing", timesteps: int = 4,
                 encoder: str = "direct", neuron: dict[str, Any] | None = None,
                 **convert_options: Any) -> SpikingModel:
    """A trainable SNN equal to ``sf.convert(ann, calibration, method, ...)``.

    Args:
        ann: a trained zoo model (it carries ``spikeforge_spec``).
        calibration: calibration batches (``None`` for learned thresholds: qcfs/csqcfs).
        method: a binary-spike method: ``threshold_balancing``, ``qcfs`` or ``csqcfs``.
        timesteps, encoder: of the SNN.
        neuron: surrogate options for training (``surrogate``, ``width``,
            ``detach_reset``); the rest of each neuron comes from the conversion.
        convert_options: passed to :func:`spikeforge.convert` (``percentile``,
            ``channelwise``, ``initial``, ...).

    Raises:
        ConversionError: a model outside the zoo, or a method whose spikes are not binary.
    """
    spec = dict(getattr(ann, "spikeforge_spec", None) or {})
    if "name" not in spec:
        raise ConversionError("hybrid initialisation needs a model from the spikeforge zoo "
                              "(sf.models.create), whose layers the SNN can mirror")
    converted = convert(ann, calibration, method, timesteps=timesteps, encoder=encoder,
                        progress=False, **convert_options)
    if converted.info["rule"] != "binary":
        raise ConversionError(f"method {method!r} emits {converted.info['rule']} spikes; an "
                              "LIF network is initialised from a binary-spike method "
                              "(threshold_balancing, qcfs, csqcfs)")
    targets = {n.name: n.target for n in activation_nodes(conversion_graph(ann))}
    training = {k: v for k, v in (neuron or {}).items() if k in TRAINING_SETTINGS}
    options = {k: v for k, v in spec.items()
               if k not in ("name", "activation", "activation_options")}
    snn = create_snn(spec["name"], timesteps, encoder, neuron=training, max_pool="cumulative",
                     **options).to(next(ann.parameters()))  # the ANN's dtype and device
    missing, _ = snn.net.load_state_dict(ann.state_dict(), strict=False)
    neuron_state = {f"{name}.{key}" for name, m in snn.net.named_modules()
                    if isinstance(m, SpikingNeuron) for key in ("threshold", "_extra_state")}
    if set(missing) - neuron_state:
        raise ConversionError(f"the SNN's parameters {sorted(set(missing) - neuron_state)} "
                              "have no counterpart in the ANN")
    converted_neurons = converted.neurons()
    for node in converted.info["thresholds"]:
        target = targets.get(node)
        own = snn.net.get_submodule(target) if isinstance(target, str) else None
        if not isinstance(own, SpikingNeuron):
            raise ConversionError(f"activation {node!r} of the ANN is not a module of the zoo "
                                  "model; cannot place its neuron")
        # the converter's neuron (named after its activation node, see to_spiking) as a
        # checkpoint restores it: θ and its settings; the training settings stay
        own.load_state_dict(converted_neurons[f"spike_{node}"].state_dict())
    return snn

"""ANN → SNN conversion (docs/design.md §1): ``sf.convert(model, calibration, method, **options)``.

A recipe over an FX graph: trace → fold BN → insert observers → calibrate → replace
activations by neurons → finalise (:mod:`~spikeforge.convert.graph`,
:mod:`~spikeforge.convert.calibrate`, :mod:`~spikeforge.convert.recipes`).
"""

from spikeforge.convert.calibrate import StreamingPercentile, calibrate
from spikeforge.convert.graph import ConversionError, conversion_graph
from spikeforge.convert.recipes import METHODS, convert, to_spiking

__all__ = ["METHODS", "ConversionError", "StreamingPercentile", "calibrate", "convert",
           "conversion_graph", "to_spiking"]

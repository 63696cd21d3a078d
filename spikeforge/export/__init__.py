"""Leaving spikeforge: NIR export and import (optional extra ``nir``)."""

from spikeforge.export.nir import ExportError, from_nir, read_nir, to_nir, write_nir

__all__ = ["ExportError", "from_nir", "read_nir", "to_nir", "write_nir"]

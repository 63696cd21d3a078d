"""One registry mechanism for every name table: lookups, command-line choices and config
checks give the same valid names and an error of the table's own type."""

from __future__ import annotations

import pytest
import torch

from spikeforge.cli import build_parser
from spikeforge.config import ConfigError
from spikeforge.convert import METHODS, ConversionError, convert
from spikeforge.data import DATASETS, DatasetError, load_dataset
from spikeforge.encoding import ENCODERS, encode
from spikeforge.models import ACTIVATIONS, MODELS, create
from spikeforge.models.layers import POOLS
from spikeforge.neurons.surrogate import SURROGATES, surrogate_grad
from spikeforge.registry import Registry
from spikeforge.simulate import PRECISIONS, resolve_precision
from spikeforge.train import TrainConfig


def test_lookup_register_and_errors():
    table = Registry("colour", {"red": 1}, error=KeyError)
    assert table.lookup("red") == 1 and table.names() == ["red"]
    with pytest.raises(KeyError, match=r"unknown colour 'blue' in the flag; valid: red"):
        table.lookup("blue", "in the flag")
    with pytest.raises(KeyError, match=r"unknown colour \['red'\]"):  # unhashable, from YAML
        table.lookup(["red"])

    def green() -> int:
        return 2

    assert table.register("green")(green) is green and table.register("green")(green) is green
    with pytest.raises(ValueError, match="colour 'green' is already registered"):
        table.register("green")(lambda: 3)
    assert table.names() == ["red", "green"]


@pytest.mark.parametrize(("registry", "call", "error"), [
    (MODELS, lambda: create("vgg99"), ValueError),
    (ACTIVATIONS, lambda: create("vgg7", activation="relu6"), ValueError),
    (POOLS, lambda: create("vgg7", pool="min"), ValueError),
    (METHODS, lambda: convert(torch.nn.Linear(2, 2), None, "ternary"), ConversionError),
    (SURROGATES, lambda: surrogate_grad("erf", torch.zeros(2)), ValueError),
    (ENCODERS, lambda: encode("latency", torch.zeros(2), 4), ValueError),
    (DATASETS, lambda: load_dataset("imagenet", "test"), DatasetError),
    (PRECISIONS, lambda: resolve_precision("fp16"), ValueError),
], ids=lambda v: v.kind if isinstance(v, Registry) else "")
def test_every_table_names_its_kind_and_all_valid_names(registry, call, error):
    with pytest.raises(error) as info:
        call()
    message = str(info.value)
    assert message.startswith(f"unknown {registry.kind} ")
    assert message.endswith("valid: " + ", ".join(registry.names()))


def test_cli_choices_and_config_checks_come_from_the_tables():
    parser = build_parser()
    convert_parser = parser._subparsers._group_actions[0].choices["convert"]
    choices = {a.dest: a.choices for a in convert_parser._actions if a.choices}
    assert list(choices["encoder"]) == ENCODERS.names()
    assert list(choices["precision"]) == PRECISIONS.names()
    config = TrainConfig()
    config.data.dataset = "mnits"
    with pytest.raises(ConfigError, match="'data.dataset' is 'mnits'; valid choices: "
                       + ", ".join(DATASETS.names())):
        config.validate()

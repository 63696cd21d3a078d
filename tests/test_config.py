"""The config mechanism: every bad key or value fails early with a message naming it."""

from __future__ import annotations

import pytest

from spikeforge.config import ConfigError, apply_overrides, from_dict, load_config
from spikeforge.train import TrainConfig


def test_defaults_and_overrides_are_typed():
    cfg = from_dict(TrainConfig, apply_overrides({}, [
        "optim.lr=0.05", "data.augment.hflip=true", "data.root=null", "seed=3",
        "optim.warmup_epochs=1", "model.options={dropout: 0.2}"]))
    assert cfg.optim.lr == 0.05 and cfg.seed == 3 and cfg.data.augment.hflip is True
    assert cfg.data.root is None and isinstance(cfg.optim.warmup_epochs, float)
    assert cfg.model.options == {"dropout": 0.2}


def test_exponent_notation_is_a_number(tmp_path):
    """Plain PyYAML reads 1e-3 as a string; spikeforge reads it as users mean it."""
    path = tmp_path / "c.yaml"
    path.write_text("optim:\n  lr: 1e-3\n  weight_decay: 5e-4\n")
    cfg = load_config(TrainConfig, path, ["optim.momentum=9e-1"])
    assert (cfg.optim.lr, cfg.optim.weight_decay, cfg.optim.momentum) == (1e-3, 5e-4, 0.9)


@pytest.mark.parametrize("overrides, fragments", [
    (["optim.lrr=0.1"], ["'optim.lrr'", "lr", "momentum", "weight_decay"]),
    (["bogus=1"], ["'bogus'", "data", "optim"]),
    (["optim.lr=fast"], ["'optim.lr'", "number", "'fast'"]),
    (["optim.epochs=2.5"], ["'optim.epochs'", "integer"]),
    (["data.test_flip=3"], ["'data.test_flip'", "true or false"]),
    (["data.augment.hflip=3"], ["'data.augment.hflip'", "bool", "'alternate'"]),
    (["optim.name=rmsprop"], ["'optim.name'", "'sgd'", "'adamw'"]),
    (["data.dataset=imagenet"], ["'data.dataset'", "cifar10", "svhn", "fashion_mnist"]),
    (["model.name=vgg99"], ["'model.name'", "vgg9", "resnet18", "cnn_small"]),
    (["model.activation=gelu"], ["'model.activation'", "relu", "clipped_relu"]),
    (["model.pool=median"], ["'model.pool'", "'avg'", "'max'"]),
    (["data.augment=3"], ["'data.augment'", "mapping", "crop_padding"]),
    (["optim.lr=-1"], ["'optim.lr'", "> 0"]),
])
def test_bad_values_name_the_key_and_the_choices(overrides, fragments):
    with pytest.raises(ConfigError) as info:
        from_dict(TrainConfig, apply_overrides({}, overrides))
    for fragment in fragments:
        assert fragment in str(info.value)


def test_yaml_file_errors_name_the_file(tmp_path):
    with pytest.raises(ConfigError, match="does-not-exist.yaml"):
        load_config(TrainConfig, tmp_path / "does-not-exist.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("optim: [unclosed\n")
    with pytest.raises(ConfigError, match="bad.yaml.*not valid YAML"):
        load_config(TrainConfig, bad)
    listy = tmp_path / "list.yaml"
    listy.write_text("- 1\n- 2\n")
    with pytest.raises(ConfigError, match="list.yaml.*mapping"):
        load_config(TrainConfig, listy)
    unsafe = tmp_path / "unsafe.yaml"
    unsafe.write_text("seed: !!python/object/apply:os.system ['echo hacked']\n")
    with pytest.raises(ConfigError, match="unsafe.yaml"):
        load_config(TrainConfig, unsafe)


def test_override_syntax_error():
    with pytest.raises(ConfigError, match="key=value"):
        apply_overrides({}, ["optim.lr"])
    with pytest.raises(ConfigError, match="'seed' is not a section"):
        apply_overrides({"seed": 1}, ["seed.x=2"])


@pytest.mark.parametrize("path", sorted(__import__("pathlib").Path(__file__).parents[1]
                                        .joinpath("configs").rglob("*.yaml")), ids=str)
def test_shipped_configs_are_valid(path):
    """Training configs and experiment configs (``name`` + ``ann``) all load and check."""
    from spikeforge.config import read_yaml
    from spikeforge.experiments.run import load_experiment

    data = read_yaml(path)
    if "ann" in data:
        exp = load_experiment(path)
        assert exp.variants and all(v.methods for v in exp.variants)
    else:
        load_config(TrainConfig, path)

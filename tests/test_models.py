"""The model zoo: every registered model builds, trains, traces and honours the factory options;
the registry and the activation factory fail clearly."""

from __future__ import annotations

import json
import operator

import pytest
import torch
import torch.fx
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from spikeforge.models import (
    ACTIVATIONS,
    MODELS,
    available,
    create,
    make_activation,
    register,
    register_activation,
)
from spikeforge.nn import ClippedReLU

pytestmark = pytest.mark.usefixtures("two_threads")
NAMES = available()
INPUTS = [(1, 28), (3, 32)]  # (in_channels, image size): MNIST-like and CIFAR-like
BATCH = 2  # batch norm needs > 1 value per channel; 2 keeps resnet19 / vgg16 fast

# every operation the SNN converter has to map: leaf modules and the residual addition
ALLOWED_MODULES = (nn.Conv2d, nn.Linear, nn.BatchNorm2d, nn.BatchNorm1d, nn.ReLU, ClippedReLU,
                   nn.AvgPool2d, nn.MaxPool2d, nn.AdaptiveAvgPool2d, nn.Flatten, nn.Dropout)


def _count(model: nn.Module, kind: type | tuple[type, ...]) -> int:
    """Instances of ``kind`` in ``model``, counting a shared instance at each use."""
    return sum(isinstance(m, kind) for _, m in model.named_modules(remove_duplicate=False))


def _params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def test_zoo_has_the_required_models():
    assert {"lenet", "cnn_small", "vgg7", "vgg9", "vgg11", "vgg16", "resnet7", "resnet11",
            "resnet18", "resnet19", "resnet20"} <= set(NAMES)
    assert NAMES == sorted(NAMES)
    assert all(callable(builder) and not isinstance(builder, nn.Module)
               for builder in MODELS.values())


@pytest.mark.parametrize("in_channels,size", INPUTS)
@pytest.mark.parametrize("name", NAMES)
def test_forward_shape_and_gradients(name, in_channels, size):
    model = create(name, num_classes=7, in_channels=in_channels)
    x = torch.randn(BATCH, in_channels, size, size)
    out = model(x)
    assert out.shape == (BATCH, 7)
    (out * torch.randn_like(out)).sum().backward()
    for pname, p in model.named_parameters():
        assert p.grad is not None, pname
        assert torch.isfinite(p.grad).all(), pname
        assert p.grad.abs().sum() > 0, pname


@pytest.mark.parametrize("in_channels,size", INPUTS)
@pytest.mark.parametrize("name", NAMES)
def test_eval_is_deterministic_and_fx_traceable(name, in_channels, size):
    model = create(name, num_classes=10, in_channels=in_channels, dropout=0.5).eval()
    x = torch.randn(BATCH, in_channels, size, size)
    with torch.no_grad():
        first, second = model(x), model(x)
        traced = torch.fx.symbolic_trace(model)
        replay = traced(x)
    assert torch.equal(first, second)
    assert torch.equal(first, replay)
    # only known leaf modules and residual additions: nothing the converter could miss
    for node in traced.graph.nodes:
        if node.op == "call_module":
            module = traced.get_submodule(node.target)
            assert isinstance(module, ALLOWED_MODULES), (node.target, module)
        elif node.op in ("call_function", "call_method"):
            assert node.target is operator.add, (node.op, node.target)


@pytest.mark.parametrize("name", NAMES)
def test_activation_and_pool_choice(name):
    base = create(name, in_channels=1)
    model = create(name, in_channels=1, activation="clipped_relu",
                   activation_options={"clip": 2.0}, pool="max")
    clipped = [m for _, m in model.named_modules(remove_duplicate=False)
               if isinstance(m, ClippedReLU)]
    assert len(clipped) == _count(base, nn.ReLU) > 0
    assert len({id(m) for m in clipped}) == len(clipped), "activations must not be shared"
    assert all(m.clip == 2.0 for m in clipped)
    assert _count(model, nn.ReLU) == 0
    # every downsampling pool follows `pool`; the global pool stays adaptive average
    assert _count(model, nn.MaxPool2d) == _count(base, nn.AvgPool2d)
    assert _count(model, nn.AvgPool2d) == 0
    assert _count(model, nn.AdaptiveAvgPool2d) == _count(base, nn.AdaptiveAvgPool2d) == 1
    with torch.no_grad():
        out = model.eval()(torch.randn(BATCH, 1, 28, 28))
    assert out.shape == (BATCH, 10) and torch.isfinite(out).all()


@pytest.mark.parametrize("name", NAMES)
def test_spec_is_json_and_rebuilds_the_model(name):
    model = create(name, num_classes=5, in_channels=1, activation="clipped_relu",
                   activation_options={"clip": 3.0}, pool="max", dropout=0.1)
    spec = json.loads(json.dumps(model.spikeforge_spec))
    assert spec["name"] == name and spec["num_classes"] == 5 and spec["in_channels"] == 1
    assert spec["activation"] == "clipped_relu" and spec["pool"] == "max"
    assert spec["dropout"] == 0.1 and spec["activation_options"] == {"clip": 3.0}
    rebuilt = create(**spec)
    rebuilt.load_state_dict(model.state_dict())  # strict: same architecture
    assert rebuilt.spikeforge_spec == spec
    assert repr(rebuilt) == repr(model)


def test_unknown_names_list_the_valid_ones():
    with pytest.raises(ValueError, match="resnet18") as info:
        create("resnet1000")
    assert all(name in str(info.value) for name in ("lenet", "cnn_small", "vgg16", "resnet20"))
    with pytest.raises(ValueError, match="clipped_relu") as info:
        create("lenet", activation="swish")
    assert "'swish'" in str(info.value) and "relu" in str(info.value)
    with pytest.raises(ValueError, match="'median'"):
        create("vgg7", pool="median")
    with pytest.raises(TypeError, match="dropout"):
        create("vgg7", dropot=0.5)
    with pytest.raises(TypeError, match="clip"):
        create("lenet", activation="relu", activation_options={"clip": 2.0})
    with pytest.raises(ValueError, match="num_classes"):
        create("lenet", num_classes=0)


def test_callable_activation_gets_the_channel_count():
    class PerChannelScale(nn.Module):
        """A stand-in for CS-QCFS: one parameter per channel."""

        def __init__(self, channels: int, init: float = 1.0) -> None:
            super().__init__()
            self.scale = nn.Parameter(torch.full((channels,), init))

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            shape = (1, -1) + (1,) * (x.dim() - 2)
            return torch.relu(x) * self.scale.view(shape)

    seen: list[int] = []

    def builder(channels: int, init: float = 1.0) -> nn.Module:
        seen.append(channels)
        return PerChannelScale(channels, init)

    model = create("cnn_small", in_channels=1, activation=builder,
                   activation_options={"init": 0.5})
    assert seen == [32, 64, 64, 128]
    assert [m.scale.numel() for m in model.modules() if isinstance(m, PerChannelScale)] == seen
    assert all(bool((m.scale == 0.5).all()) for m in model.modules()
               if isinstance(m, PerChannelScale))
    assert model(torch.randn(BATCH, 1, 28, 28)).shape == (BATCH, 10)
    assert model.spikeforge_spec["activation"].endswith("builder")
    json.dumps(model.spikeforge_spec)

    resnet = create("resnet20", activation=builder)
    assert resnet(torch.randn(BATCH, 3, 32, 32)).shape == (BATCH, 10)


def test_activation_factory():
    assert isinstance(make_activation("relu", 16), nn.ReLU)
    act = make_activation("clipped_relu", 16, clip=4.0)
    assert isinstance(act, ClippedReLU) and act.clip == 4.0
    assert make_activation("relu", 16) is not make_activation("relu", 16)
    assert isinstance(make_activation(lambda channels: nn.SiLU(), 8), nn.SiLU)
    with pytest.raises(ValueError, match="in-place"):
        make_activation(nn.ReLU, 8)  # nn.ReLU(8) would be ReLU(inplace=8)
    with pytest.raises(TypeError, match="nn.Module"):
        make_activation(lambda channels: torch.relu, 8)
    with pytest.raises(ValueError, match="unknown activation 'qcfs-typo'; valid: relu, "
                       "clipped_relu, qcfs, csqcfs, lif"):
        make_activation("qcfs-typo", 8)


def test_register_activation_and_model():
    def leaky(channels: int, slope: float = 0.1) -> nn.Module:
        return nn.LeakyReLU(slope)

    try:
        register_activation("test_leaky", leaky)
        register_activation("test_leaky", leaky)  # same builder again: fine
        with pytest.raises(ValueError, match="already registered"):
            register_activation("test_leaky", lambda channels: nn.ReLU())
        model = create("lenet", in_channels=1, activation="test_leaky",
                       activation_options={"slope": 0.2})
        assert _count(model, nn.LeakyReLU) == 3
        assert model.spikeforge_spec["activation"] == "test_leaky"
        # a registered callable is recorded by its name, so checkpoints can rebuild it
        assert create("lenet", activation=leaky).spikeforge_spec["activation"] == "test_leaky"
    finally:
        ACTIVATIONS.pop("test_leaky", None)

    try:
        @register("test_tiny")
        def tiny(*, num_classes, in_channels, act, pool, hidden=8):
            return nn.Sequential(nn.Flatten(), nn.Linear(in_channels * 28 * 28, hidden),
                                 act(hidden), nn.Linear(hidden, num_classes))

        assert "test_tiny" in available()
        model = create("test_tiny", num_classes=3, in_channels=1, hidden=4)
        assert model(torch.randn(BATCH, 1, 28, 28)).shape == (BATCH, 3)
        assert model.spikeforge_spec["hidden"] == 4
        with pytest.raises(ValueError, match="already registered"):
            register("test_tiny")(lambda *, num_classes, in_channels, act, pool: None)
        with pytest.raises(TypeError, match="must accept"):
            register("test_bad")(lambda num_classes: None)
    finally:
        MODELS.pop("test_tiny", None)
        MODELS.pop("test_bad", None)


@pytest.mark.parametrize("name,params", [
    ("resnet18", 11_173_962),  # the usual CIFAR ResNet-18: 11.17 M
    ("resnet20", 272_474),  # He et al. 0.27 M (+ two 1x1 projection shortcuts)
    ("vgg16", 33_642_442),  # QCFS-style CIFAR VGG-16 with 4096-4096 classifier
    ("lenet", 431_080),  # Caffe / Lee et al. LeNet (1 input channel)
])
def test_parameter_counts(name, params):
    in_channels = 1 if name == "lenet" else 3
    assert _params(create(name, num_classes=10, in_channels=in_channels)) == params


def test_parameter_count_ranges():
    assert 12.0e6 < _params(create("resnet19")) < 13.5e6  # Zheng et al.'s ResNet-19: 12.7 M
    assert 14.7e6 < _params(create("vgg16", hidden=[])) < 14.75e6  # lean VGG-16: 14.7 M
    assert 9.0e6 < _params(create("vgg11")) < 30e6
    assert _params(create("cnn_small", in_channels=1)) < 0.5e6


def test_width_batch_norm_and_dropout_options():
    half = create("cnn_small", in_channels=1, width=0.5)
    assert [m.out_channels for m in half.modules() if isinstance(m, nn.Conv2d)] == [16, 32, 32]
    assert _params(half) < _params(create("cnn_small", in_channels=1))
    plain = create("resnet20", batch_norm=False)
    assert _count(plain, (nn.BatchNorm2d, nn.BatchNorm1d)) == 0
    assert all(m.bias is not None for m in plain.modules() if isinstance(m, nn.Conv2d))
    assert plain(torch.randn(BATCH, 3, 32, 32)).shape == (BATCH, 10)
    assert _count(create("vgg9", dropout=0.2), nn.Dropout) == 2
    assert _count(create("vgg9"), nn.Dropout) == 0


@settings(max_examples=50, deadline=None)
@given(values=st.lists(st.floats(-100, 100, allow_nan=False), min_size=1, max_size=32),
       clip=st.floats(0.01, 50))
def test_clipped_relu_is_a_clamp(values, clip):
    act = ClippedReLU(clip)
    x = torch.tensor(values, dtype=torch.float64)
    y = act(x)
    assert torch.equal(y, torch.clamp(x, 0.0, float(clip)))
    assert (y >= 0).all() and (y <= clip).all()


def test_clipped_relu_module():
    act = ClippedReLU(2.0)
    assert "clip=2.0" in repr(act)
    x = torch.tensor([-1.0, 0.5, 1.5, 3.0], requires_grad=True)
    act(x).sum().backward()
    assert x.grad.tolist() == [0.0, 1.0, 1.0, 0.0]
    assert ClippedReLU().clip == 1.0
    with pytest.raises(ValueError, match="clip"):
        ClippedReLU(0.0)

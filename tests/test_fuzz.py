"""Fuzzed conversion: random small models from the supported layer set either convert and
agree with the ANN, or fail with the error that names the unsupported node."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from torch import nn

import spikeforge as sf
from spikeforge.nn import QCFS


class Block(nn.Module):
    """conv (+ BN) + activation (module or functional) (+ pool) (+ dropout), or a residual
    block conv-BN-act-conv-BN + identity, then the activation."""

    def __init__(self, channels: int, out: int, spec: dict, act: type[nn.Module] | None) -> None:
        super().__init__()
        self.residual = spec["residual"] and channels == out
        self.conv = nn.Conv2d(channels, out, spec["kernel"], padding=spec["kernel"] // 2)
        self.bn = nn.BatchNorm2d(out) if spec["bn"] else nn.Identity()
        self.conv2 = nn.Conv2d(out, out, 3, padding=1) if self.residual else None
        self.act = act() if act is not None else None
        self.functional = spec["functional"] and act is None
        self.pool = {"avg": nn.AvgPool2d(2), "max": nn.MaxPool2d(2), None: None}[spec["pool"]]
        self.drop = nn.Dropout(0.2) if spec["dropout"] else None

    def activation(self, x: torch.Tensor) -> torch.Tensor:
        if self.act is not None:
            return self.act(x)
        return F.relu(x) if self.functional else torch.relu(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.activation(self.bn(self.conv(x)))
        if self.conv2 is not None:
            y = self.activation(self.conv2(y) + x)
        if self.pool is not None:
            y = self.pool(y)
        return self.drop(y) if self.drop is not None else y


class Net(nn.Module):
    def __init__(self, specs: list[dict], flatten: str, hidden: int,
                 act: type[nn.Module] | None = None) -> None:
        super().__init__()
        channels, size, blocks = 2, 8, []
        for spec in specs:
            blocks.append(Block(channels, spec["channels"], spec, act))
            channels = spec["channels"]
            size //= 2 if spec["pool"] else 1
        self.blocks = nn.Sequential(*blocks)
        self.flatten, self.flat = flatten, nn.Flatten()
        self.fc1 = nn.Linear(channels * size * size, hidden)
        self.act = act() if act is not None else nn.ReLU()
        self.fc2 = nn.Linear(hidden, 5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.blocks(x)
        if self.flatten == "module":
            x = self.flat(x)
        else:
            x = x.view(x.shape[0], -1) if self.flatten == "view" else x.flatten(1)
        return self.fc2(self.act(self.fc1(x)))


block_specs = st.fixed_dictionaries({
    "channels": st.integers(2, 6), "kernel": st.sampled_from([1, 3]), "bn": st.booleans(),
    "functional": st.booleans(), "pool": st.sampled_from([None, "avg", "max"]),
    "dropout": st.booleans(), "residual": st.booleans()})
architectures = st.tuples(st.lists(block_specs, min_size=1, max_size=3),
                          st.sampled_from(["module", "view", "method"]), st.integers(4, 12))


def _settle(model: nn.Module, x: torch.Tensor) -> nn.Module:
    """Give BN running statistics (a few training-mode passes), then eval."""
    model.train()
    with torch.no_grad():
        for _ in range(3):
            model(x)
    return model.eval()


@settings(max_examples=20, deadline=None, derandomize=True,
          suppress_health_check=[HealthCheck.too_slow])
@given(architecture=architectures, seed=st.integers(0, 2**16))
def test_random_models_convert_and_agree_at_large_t(architecture, seed):
    """Threshold balancing at T = 256 agrees with the ANN on ≥ 99% of the predictions the
    ANN makes with a margin (top-2 logit gap > 2% of the largest |logit|); a random network's
    near-ties are below the SNN's quantization step and are not counted."""
    torch.manual_seed(seed)
    model = Net(*architecture)
    x = torch.rand(100, 2, 8, 8)
    model = _settle(model, x)
    try:
        snn = sf.convert(model, [x], "threshold_balancing", timesteps=256, percentile=100.0,
                         initial="half", progress=False)
    except sf.ConversionError as err:  # the documented outcome for a dead random layer
        assert "produced no positive value" in str(err) and "node '" in str(err)
        return
    with torch.no_grad():
        ann, out = model(x), snn(x).sum(0)
    # only predictions the ANN makes with a margin are comparable: a random net's logits
    # can tie to within the SNN's quantization step
    top2 = ann.topk(2, dim=1).values
    clear = (top2[:, 0] - top2[:, 1]) > 0.02 * ann.abs().max()
    agree = (out.argmax(1) == ann.argmax(1))[clear].double().mean().item()
    assert clear.sum() >= 50 and agree >= 0.99


@settings(max_examples=15, deadline=None, derandomize=True,
          suppress_health_check=[HealthCheck.too_slow])
@given(specs=st.lists(block_specs, min_size=1, max_size=3), hidden=st.integers(4, 12),
       seed=st.integers(0, 2**16))
def test_random_qcfs_models_equal_the_ann_at_t_equal_l_equal_1(specs, hidden, seed):
    torch.manual_seed(seed)
    specs = [dict(s, pool="avg" if s["pool"] else None) for s in specs]  # QCFS: avg pools
    model = Net(specs, "view", hidden, act=lambda: QCFS(levels=1, threshold=0.5)).double()
    x = torch.rand(50, 2, 8, 8, dtype=torch.float64)
    model = _settle(model, x)
    snn = sf.convert(model, None, "qcfs", timesteps=1, progress=False)
    with torch.no_grad():
        torch.testing.assert_close(snn(x)[0], model(x), atol=1e-9, rtol=1e-9)


class _Unsupported(nn.Module):
    def __init__(self, op: str) -> None:
        super().__init__()
        self.op, self.fc = op, nn.Linear(6, 6)
        self.lstm = nn.LSTM(6, 6, batch_first=True) if op == "lstm" else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = torch.relu(self.fc(x))
        if self.op == "sort":
            y = torch.sort(y, dim=1).values
        elif self.op == "sigmoid":
            y = torch.sigmoid(y)
        elif self.op == "lstm":
            y = self.lstm(y.unsqueeze(1))[0].squeeze(1)
        elif self.op == "mask":
            y = y.masked_fill(y > 1.0, 0.0)
        elif self.op == "inplace":
            y[y > 1.0] = 0.0
        return self.fc(y)


@pytest.mark.parametrize("op, node", [("sort", "sort"), ("sigmoid", "sigmoid"),
                                      ("lstm", "lstm"), ("mask", "gt")])
def test_unsupported_operations_name_their_node(op, node):
    with pytest.raises(sf.ConversionError,
                       match=f"unsupported operation node '{node}.*test_fuzz.py:"):
        sf.convert(_Unsupported(op), [torch.randn(8, 6)], progress=False)


def test_in_place_assignment_names_the_line():
    with pytest.raises(sf.ConversionError,
                       match=r"could not trace _Unsupported at .*test_fuzz.py:\d+ in forward: "
                             r".*item assignment"):
        sf.convert(_Unsupported("inplace"), [torch.randn(8, 6)], progress=False)


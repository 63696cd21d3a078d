"""The fast-training recipe on real (bundled) data: patch whitening, identity init, the
weight average, derandomised flips, the schedule, bf16 detection, and the convertible
cifarnet that uses them."""

from __future__ import annotations

import copy
import json
import operator

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import spikeforge as sf
from spikeforge.config import ConfigError, from_dict
from spikeforge.convert import conversion_graph
from spikeforge.data import Augment, BatchLoader, load_dataset
from spikeforge.models import create
from spikeforge.neurons import SpikingMaxPool
from spikeforge.nn import CSQCFS, QCFS
from spikeforge.runtime import native_bf16
from spikeforge.train import TrainConfig, fit, load_checkpoint, load_model
from spikeforge.train.build import frozen_parameters, set_norm_momentum
from spikeforge.train.checkpoint import save_checkpoint
from spikeforge.train.loop import (
    _amp,
    base_lr,
    build_optimizer,
    build_scheduler,
    lr_factor,
)
from spikeforge.train.recipe import (
    Lookahead,
    WeightAverage,
    dirac_init,
    first_conv,
    flip_averaged,
    patch_whitening,
    whiten_first_conv,
)


@pytest.fixture(scope="module")
def digits() -> torch.Tensor:
    """2000 bundled MNIST training images, normalised as the loader does."""
    train = load_dataset("mnist_demo", "train").subset(2000, seed=0)
    return torch.cat([x for x, _ in BatchLoader(train, 500)])


def test_whitening_decorrelates_patches_to_unit_variance(digits):
    weight = patch_whitening(digits, kernel=2, eps=0.0)
    assert weight.shape == (8, 1, 2, 2)  # d = 1·2² filters and their negatives
    torch.testing.assert_close(weight[4:], -weight[:4])
    # the whitened coordinates of the centred patches have identity covariance
    out = F.conv2d(digits.double(), weight[:4].double())
    coords = out.permute(0, 2, 3, 1).reshape(-1, 4)
    coords = coords - coords.mean(0)
    covariance = coords.T @ coords / len(coords)
    torch.testing.assert_close(covariance, torch.eye(4, dtype=torch.float64), atol=1e-6,
                               rtol=0)
    # ordered by decreasing eigenvalue: the first filter has the smallest norm
    norms = weight[:4].flatten(1).norm(dim=1)
    assert torch.all(norms[:-1] <= norms[1:])


def test_whiten_first_conv_freezes_it_and_checks_its_shape(digits):
    model = create("cifarnet", num_classes=10, in_channels=1, widths=(8, 16, 16))
    whiten_first_conv(model, digits)
    conv = first_conv(model)
    assert conv is model.features[0] and not conv.weight.requires_grad
    torch.testing.assert_close(conv.weight, patch_whitening(digits, 2))
    assert conv.bias.requires_grad and torch.all(conv.bias == 0)
    with pytest.raises(ValueError, match="2·C·k² = 8 output channels"):
        whiten_first_conv(nn.Sequential(nn.Conv2d(1, 6, 2)), digits)


def test_dirac_init_makes_convs_pass_their_input_through():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 8, 2), nn.Conv2d(8, 8, 3, padding=1, bias=False),
                          nn.Conv2d(8, 16, 3, padding=1, bias=False),
                          nn.Conv2d(16, 4, 3, padding=1), nn.Conv2d(4, 4, 3, stride=2))
    before = model[0].weight.clone()
    assert dirac_init(model, skip=model[0]) == 2  # fewer outputs, even kernel, stride: kept
    torch.testing.assert_close(model[0].weight, before)
    x = torch.randn(2, 8, 6, 6)
    torch.testing.assert_close(model[1](x), x)
    out = model[2](x)
    torch.testing.assert_close(out[:, :8], x)
    assert out[:, 8:].abs().sum() > 0  # the other filters keep their random init


@pytest.mark.parametrize("conv_init", ["he", "uniform"])
def test_cifarnet_conv_init_draws_from_its_distribution(conv_init):
    """He: N(0, 2/fan_out); uniform (PyTorch's default, airbench): U(±1/√fan_in), standard
    deviation 1/√(3·fan_in). Checked on the 256→256 conv of the last block (590k weights)."""
    torch.manual_seed(0)
    model = create("cifarnet", num_classes=10, in_channels=3, conv_init=conv_init)
    conv = [m for m in model.modules() if isinstance(m, nn.Conv2d)][-1]
    fan_in = conv.in_channels * 9
    fan_out = conv.out_channels * 9
    w = conv.weight.detach()
    if conv_init == "he":
        assert w.std().item() == pytest.approx((2 / fan_out) ** 0.5, rel=0.01)
    else:
        assert w.abs().max().item() <= fan_in ** -0.5
        assert w.std().item() == pytest.approx((3 * fan_in) ** -0.5, rel=0.01)
    with pytest.raises(ValueError, match="unknown conv_init 'xavier'"):
        create("cifarnet", conv_init="xavier")


def test_weight_average_follows_its_equation_and_resumes():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(3, 2), nn.BatchNorm1d(2))
    average = WeightAverage(model, decay=0.9)
    expected = model[0].weight.detach().clone()
    for n in range(30):
        with torch.no_grad():
            model[0].weight.add_(torch.randn(2, 3))
        model[1].num_batches_tracked += 1
        average.update(model)
        d = min(0.9, (1 + n) / (10 + n))
        expected = d * expected + (1 - d) * model[0].weight.detach()
    torch.testing.assert_close(average.model[0].weight, expected)
    assert int(average.model[1].num_batches_tracked) == 30  # integer buffers are copied
    assert not any(p.requires_grad for p in average.model.parameters())
    other = WeightAverage(model, decay=0.9)
    other.load_state_dict(average.state_dict())
    assert other.updates == 30
    torch.testing.assert_close(other.model[0].weight, expected)
    with pytest.raises(ValueError, match="decay"):
        WeightAverage(model, decay=1.0)


def test_lookahead_follows_its_equation_and_pulls_the_weights_back():
    model = nn.Sequential(nn.Linear(3, 2), nn.BatchNorm1d(2))
    lookahead = Lookahead(total=12, every=2, decay=0.9, power=3.0, start=4)
    slow, fast = None, None
    for n in range(1, 13):
        with torch.no_grad():
            model[0].weight.add_(float(n))  # an optimizer step
            model[1].running_mean.add_(1.0)
        fast = model[0].weight.detach().clone()
        lookahead.update(model)
        if n < 4 or n % 2:  # no update: the model keeps its step
            torch.testing.assert_close(model[0].weight, fast)
        elif slow is None:  # the first update takes the slow weights
            slow = fast
        else:
            d = 0.9 ** 2 * (n / 12) ** 3
            slow = d * slow + (1 - d) * fast
            torch.testing.assert_close(model[0].weight, slow)
    assert model[1].num_batches_tracked == 0  # integer buffers are not averaged
    with torch.no_grad():
        model[0].weight.add_(5.0)
    lookahead.sync(model)
    torch.testing.assert_close(model[0].weight, slow)
    restored = Lookahead(total=12, every=2, decay=0.9, start=4)
    restored.load_state_dict(lookahead.state_dict())
    assert restored.steps == 12
    torch.testing.assert_close(restored.slow["0.weight"], slow)


def test_weight_average_of_a_spiking_network_averages_its_weights():
    """A directly trained SNN's state holds its neurons' settings (extra state, not tensors)
    beside the weights: the average keeps them and averages the weights."""
    from spikeforge.models.spiking import create_snn

    torch.manual_seed(0)
    snn = create_snn("cifarnet", timesteps=2, in_channels=3)
    average = WeightAverage(snn, decay=0.5)
    name, conv = next((n, m) for n, m in snn.named_modules()
                      if isinstance(m, nn.Conv2d) and m.weight.requires_grad)
    before = conv.weight.detach().clone()
    with torch.no_grad():
        conv.weight.add_(1.0)
    average.update(snn)  # d = 1/10 at the first update
    torch.testing.assert_close(average.model.get_submodule(name).weight, before + 0.9)
    assert average.model.state_dict().keys() == snn.state_dict().keys()


def test_alternating_flips_mirror_each_image_every_other_epoch():
    train = load_dataset("mnist_demo", "train").subset(300, seed=0)
    plain = torch.cat([x for x, _ in BatchLoader(train, 100)])
    mirrored = plain.flip(-1)
    loader = BatchLoader(train, 100, augment=Augment(hflip="alternate"), seed=3)
    flipped = []
    for epoch in range(4):
        loader.set_epoch(epoch)
        x = torch.cat([x for x, _ in loader])
        is_flipped = (x == mirrored).flatten(1).all(1)
        assert torch.all(is_flipped | (x == plain).flatten(1).all(1))
        flipped.append(is_flipped)
    assert torch.equal(flipped[0], ~flipped[1]) and torch.equal(flipped[0], flipped[2])
    assert torch.equal(flipped[1], flipped[3])
    assert 100 < int(flipped[0].sum()) < 200  # a fair coin per image
    with pytest.raises(ValueError, match="flip mask"):
        Augment(hflip="alternate")(plain[:2], torch.Generator())


@pytest.mark.parametrize("pad_mode", ["zeros", "reflect"])
def test_translations_stay_within_the_padding(pad_mode):
    train = load_dataset("mnist_demo", "train").subset(64, seed=0)
    raw = train.images.float() + torch.arange(28.0)  # a border that differs from its mirror
    x = Augment(crop_padding=2, hflip="alternate", pad_mode=pad_mode)(
        raw, torch.Generator().manual_seed(0), torch.zeros(64, dtype=torch.bool))
    padded = F.pad(raw, (2, 2, 2, 2), mode="constant" if pad_mode == "zeros" else "reflect")
    seen = set()
    for i in range(64):
        offsets = [(dy, dx) for dy in range(5) for dx in range(5)
                   if torch.equal(padded[i, :, dy:dy + 28, dx:dx + 28], x[i])]
        assert len(offsets) == 1, f"image {i} is not a translation by at most 2 px"
        seen.update(offsets)
    assert len(seen) > 15  # of the 25 offsets


def test_linear_schedule_and_batch_scaled_lr():
    assert lr_factor(0, 100, 20, "linear") == pytest.approx(0.05)
    assert lr_factor(19, 100, 20, "linear") == pytest.approx(1.0)
    assert lr_factor(60, 100, 20, "linear") == pytest.approx(0.5)
    assert lr_factor(100, 100, 20, "linear") == pytest.approx(0.0)
    # airbench's triangle: 0.2 -> 1 over the warm-up, then -> 0.07 at the last step
    assert lr_factor(0, 100, 20, "linear", start=0.2, end=0.07) == pytest.approx(0.2)
    assert lr_factor(10, 100, 20, "linear", start=0.2, end=0.07) == pytest.approx(0.6)
    assert lr_factor(20, 100, 20, "linear", start=0.2, end=0.07) == pytest.approx(1.0)
    assert lr_factor(60, 100, 20, "linear", start=0.2, end=0.07) == pytest.approx(0.535)
    assert lr_factor(100, 100, 20, "linear", start=0.2, end=0.07) == pytest.approx(0.07)
    assert lr_factor(100, 100, 20, "cosine", end=0.1) == pytest.approx(0.1)
    cfg = TrainConfig().optim
    cfg.lr, cfg.reference_batch_size = 0.4, 512
    assert base_lr(cfg, 1024) == pytest.approx(0.8)
    cfg.reference_batch_size = None
    assert base_lr(cfg, 1024) == 0.4


def test_batch_norm_biases_learn_faster_with_the_same_decay_per_step():
    model = create("cifarnet", activation="qcfs", widths=(8, 16, 16))
    cfg = TrainConfig().optim
    cfg.lr, cfg.weight_decay, cfg.norm_bias_lr_scale = 0.5, 1e-3, 64.0
    optimizer = build_optimizer(model, cfg)
    groups = {g["name"]: g for g in optimizer.param_groups}
    biases = {id(m.bias) for m in model.modules() if isinstance(m, nn.BatchNorm2d)}
    assert {id(p) for p in groups["norm_biases"]["params"]} == biases
    assert sum(len(g["params"]) for g in groups.values()) == len(list(model.parameters()))
    assert groups["norm_biases"]["lr"] == 32.0 and groups["weights"]["lr"] == 0.5
    for g in groups.values():  # lr·wd: the same decay per step in every group
        assert g["lr"] * g["weight_decay"] == pytest.approx(5e-4)
    # one plain SGD step from zero gradient: each group shrinks by lr·wd
    cfg.momentum = 0.0
    optimizer = build_optimizer(model, cfg)
    groups = {g["name"]: g for g in optimizer.param_groups}
    for p in groups["norm_biases"]["params"]:
        p.data.fill_(1.0)
        p.grad = torch.zeros_like(p)
    optimizer.step()
    assert all(torch.allclose(p, torch.full_like(p, 1 - 5e-4))
               for p in groups["norm_biases"]["params"])


def test_frozen_batch_norm_scales_stay_at_their_value_while_biases_learn():
    torch.manual_seed(0)
    model = create("cifarnet", widths=(8, 16, 16), in_channels=1, num_classes=10)
    cfg = TrainConfig().optim
    cfg.lr, cfg.norm_weight_lr_scale, cfg.epochs = 0.2, 0.0, 1
    optimizer = build_optimizer(model, cfg)
    scheduler = build_scheduler(optimizer, cfg, steps_per_epoch=3)
    groups = {g["name"]: g for g in optimizer.param_groups}
    norms = [m for m in model.modules() if isinstance(m, nn.BatchNorm2d)]
    assert {id(p) for p in groups["norm_weights"]["params"]} == {id(m.weight) for m in norms}
    assert groups["norm_weights"]["lr"] == 0 and groups["norm_weights"]["weight_decay"] == 0
    scales = [m.weight.detach().clone() for m in norms]
    biases = [m.bias.detach().clone() for m in norms]
    x, y = next(iter(BatchLoader(load_dataset("mnist_demo", "train").subset(32, seed=0), 32)))
    for _ in range(3):  # real steps: the scales get gradients and momentum, and stay put
        optimizer.zero_grad()
        nn.functional.cross_entropy(model(x), y).backward()
        assert all(m.weight.grad.abs().sum() > 0 for m in norms)
        optimizer.step()
        scheduler.step()
    assert all(torch.equal(m.weight, s) for m, s in zip(norms, scales, strict=True))
    assert all(not torch.equal(m.bias, b) for m, b in zip(norms, biases, strict=True))
    with pytest.raises(ConfigError, match="optim.norm_weight_lr_scale"):
        from_dict(TrainConfig, {"optim": {"norm_weight_lr_scale": -1}}).validate()


def test_norm_momentum_sets_the_running_statistics_update():
    torch.manual_seed(0)
    model = create("cifarnet", widths=(8, 16, 16), in_channels=1, num_classes=10)
    set_norm_momentum(model, 0.4)
    x, _ = next(iter(BatchLoader(load_dataset("mnist_demo", "train").subset(32, seed=0), 32)))
    features = model.features[:3]  # whitening conv, its activation, the first block's conv
    bn = model.features[3]
    model.train()(x)
    # r <- (1 - m) r + m x̄ from r = 0, m = 0.4: airbench's 0.6 in its own convention
    torch.testing.assert_close(bn.running_mean, 0.4 * features(x).mean((0, 2, 3)))
    assert all(m.momentum == 0.4 for m in model.modules() if isinstance(m, nn.BatchNorm2d))
    for key, value in (("norm_momentum", 1.5), ("lr_start", -0.1), ("lr_end", 2.0)):
        with pytest.raises(ConfigError, match=f"optim.{key}"):
            from_dict(TrainConfig, {"optim": {key: value}}).validate()


def test_bf16_only_where_the_cpu_does_it_natively(monkeypatch):
    assert native_bf16("cpu") == bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    cpu = torch.device("cpu")
    monkeypatch.setattr("spikeforge.train.loop.native_bf16", lambda device: False)
    autocast, _, precision = _amp(cpu, True)
    assert precision == "float32"
    with autocast:
        assert torch.mm(torch.ones(2, 2), torch.ones(2, 2)).dtype == torch.float32
    with pytest.warns(UserWarning, match="run.amp='bfloat16'.*emulated"):
        autocast, _, precision = _amp(cpu, "bfloat16")  # asked for: bf16 all the same
    assert precision == "bfloat16"
    with autocast:
        assert torch.mm(torch.ones(2, 2), torch.ones(2, 2)).dtype == torch.bfloat16
    monkeypatch.setattr("spikeforge.train.loop.native_bf16", lambda device: True)
    autocast, scaler, precision = _amp(cpu, True)
    assert precision == "bfloat16" and not scaler.is_enabled()
    with autocast:
        assert torch.mm(torch.ones(2, 2), torch.ones(2, 2)).dtype == torch.bfloat16
    assert _amp(cpu, False)[2] == "float32"


RECIPE = {  # over conftest's TINY_MNIST
    "seed": 2,
    "data": {"batch_size": 50, "eval_batch_size": 500,
             "train_subset": 1000, "test_subset": 500, "test_flip": True,
             "augment": {"crop_padding": 2, "hflip": "alternate"}},
    "model": {"name": "cifarnet", "whiten": True, "dirac": True,
              "options": {"widths": [16, 32, 32]}},
    "optim": {"lr": 0.2, "reference_batch_size": 100, "epochs": 2, "warmup_epochs": 0.5,
              "schedule": "linear", "label_smoothing": 0.2, "ema": 0.9},
    "run": {"checkpoint_minutes": 0},
}


def test_recipe_trains_and_resumes_exactly(tmp_path, train_config, kill_and_resume):
    result = fit(train_config(tmp_path / "a", RECIPE))
    assert result.test_accuracy > 30.0, result.history  # chance: 10%
    summary = json.loads((tmp_path / "a" / "results.json").read_text())
    assert summary["precision"] in ("float32", "bfloat16")
    assert "test_accuracy_flip" in summary and "test_loss_flip" in result.history[-1]
    saved = load_checkpoint(tmp_path / "a" / "checkpoint.pt")
    # the whitening filters are those of the seeded 1000 training images, kept frozen
    train = load_dataset("mnist_demo", "train").subset(1000, seed=2)
    images = torch.cat([x for x, _ in BatchLoader(train.subset(1000, seed=2), 1000)])
    torch.testing.assert_close(saved["model"]["features.0.weight"], patch_whitening(images, 2))
    # "model" is the weight average (what was evaluated), "trained_model" the SGD weights
    assert saved["average_updates"] == 40
    assert not torch.equal(saved["model"]["features.2.weight"],
                           saved["trained_model"]["features.2.weight"])
    model = load_model(tmp_path / "a" / "checkpoint.pt")
    test = BatchLoader(load_dataset("mnist_demo", "test").subset(500, seed=2), 500)
    from spikeforge.train import loss_and_accuracy

    assert loss_and_accuracy(model, test)[1] == pytest.approx(result.test_accuracy)
    flipped = loss_and_accuracy(model, test, flip=True)[1]
    assert flipped == pytest.approx(summary["test_accuracy_flip"])
    # killed in the second epoch, then resumed: the same weights and average
    kill_and_resume(train_config(tmp_path / "b", RECIPE), epoch=2)
    resumed = load_checkpoint(tmp_path / "b" / "checkpoint.pt")
    for key in ("model", "trained_model"):
        for name, value in saved[key].items():
            torch.testing.assert_close(resumed[key][name], value, atol=0, rtol=0, msg=name)


AIRBENCH_FORM = {  # RECIPE with airbench's remaining choices, the whitening bias never trained
    **RECIPE,
    "data": {**RECIPE["data"], "augment": {**RECIPE["data"]["augment"], "pad_mode": "reflect"}},
    "optim": {**RECIPE["optim"], "ema": None, "lookahead_every": 5,
              "lookahead_start_epochs": 0.5, "whiten_bias_epochs": 0, "lr_start": 0.2,
              "lr_end": 0.07, "norm_momentum": 0.4},
}


def test_airbench_form_trains_freezes_the_whitening_bias_and_resumes_exactly(
        tmp_path, train_config, kill_and_resume):
    result = fit(train_config(tmp_path / "a", AIRBENCH_FORM))
    assert result.test_accuracy > 30.0, result.history
    saved = load_checkpoint(tmp_path / "a" / "checkpoint.pt")
    assert saved["lookahead"]["steps"] == 40
    for name, value in saved["lookahead"]["slow"].items():  # the evaluated model is the slow one
        torch.testing.assert_close(saved["model"][name], value, atol=0, rtol=0)
    assert not saved["model"]["features.0.bias"].any()  # frozen at its initial zeros
    kill_and_resume(train_config(tmp_path / "b", AIRBENCH_FORM), epoch=2)
    resumed = load_checkpoint(tmp_path / "b" / "checkpoint.pt")
    for name, value in saved["model"].items():
        torch.testing.assert_close(resumed["model"][name], value, atol=0, rtol=0, msg=name)
    cfg = from_dict(TrainConfig, {"model": {"whiten": True}, "optim": {"whiten_bias_epochs": 3}})
    model = create("cifarnet", widths=(8, 16, 16), in_channels=1, num_classes=10)
    assert frozen_parameters(model, cfg, 2) == []
    assert frozen_parameters(model, cfg, 3) == [model.features[0].bias]
    with pytest.raises(ConfigError, match="exclude each other"):
        from_dict(TrainConfig, {"optim": {"ema": 0.9, "lookahead_every": 5}}).validate()


def _quantized(pool: str, head_scale: float = 1.0, head_pool: str = "avg") -> nn.Module:
    """A small CS-QCFS cifarnet (L = 4) with random statistics and thresholds, float64."""
    torch.manual_seed(1)
    model = create("cifarnet", num_classes=10, in_channels=3, activation="csqcfs",
                   activation_options={"levels": 4}, pool=pool, widths=(8, 16, 16),
                   head_scale=head_scale, head_pool=head_pool)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.uniform_(-0.2, 0.2)
                m.running_var.uniform_(0.5, 1.5)
            if isinstance(m, CSQCFS | QCFS):
                for p in m.parameters():
                    p.uniform_(0.0, 2.0)
    return model.double().eval()


@pytest.mark.parametrize(("pool", "head_scale", "head_pool"),
                         [("avg", 1.0, "avg"), ("max", 1 / 9, "avg"), ("max", 1 / 9, "max")])
def test_cifarnet_augmapping_on_learned_thresholds_is_its_ann_at_t1(pool, head_scale,
                                                                     head_pool):
    model = _quantized(pool, head_scale, head_pool)
    x = torch.randn(6, 3, 32, 32, dtype=torch.float64)
    snn = sf.convert(model, None, "augmapping", thresholds="learned", timesteps=1)
    with torch.no_grad():
        graph = conversion_graph(model)
        # the logits' scale is folded into the bias-free Linear before it
        assert not [n for n in graph.graph.nodes if n.target is operator.mul]
        expected = graph(x)
        torch.testing.assert_close(expected, model(x), atol=1e-12, rtol=1e-12)
        torch.testing.assert_close(snn(x, timesteps=1)[0], expected, atol=1e-10, rtol=1e-10)
        # test-time flips: the SNN sees the same two views as its ANN
        torch.testing.assert_close(flip_averaged(lambda v: snn(v, timesteps=1)[0], x),
                                   flip_averaged(conversion_graph(model), x),
                                   atol=1e-10, rtol=1e-10)


def test_snn_is_evaluated_with_the_flip_views_of_its_ann():
    model = _quantized("avg")
    torch.manual_seed(3)
    batches = [(torch.randn(8, 3, 32, 32, dtype=torch.float64), torch.randint(0, 10, (8,)))
               for _ in range(2)]
    snn = sf.convert(model, None, "csqcfs", timesteps=4)
    plain = sf.evaluate(snn, batches, ann=model)
    both = sf.evaluate(snn, batches, ann=model, flip=True)
    # the one-view figures are unchanged; the mirror view is not counted in SOPs
    assert both.accuracy == plain.accuracy and both.ann_accuracy == plain.ann_accuracy
    assert both.sops_per_sample == plain.sops_per_sample and plain.accuracy_flip is None
    with torch.no_grad():
        x = torch.cat([b[0] for b in batches])
        y = torch.cat([b[1] for b in batches])
        summed = snn(x).cumsum(0) + snn(x.flip(-1)).cumsum(0)
        expected = (summed.argmax(-1) == y).double().mean(1) * 100
        ann = ((model(x) + model(x.flip(-1))).argmax(-1) == y).double().mean() * 100
    assert both.accuracy_flip == pytest.approx(expected.tolist())
    assert both.ann_accuracy_flip == pytest.approx(float(ann))


@pytest.mark.parametrize("pool", ["avg", "max"])
def test_hybrid_cifarnet_starts_as_its_conversion_and_keeps_its_max_pools(tmp_path, pool):
    from spikeforge.train.hybrid import snn_from_ann

    model = _quantized(pool, 1 / 9 if pool == "max" else 1.0, pool)
    x = torch.randn(4, 3, 32, 32, dtype=torch.float64)
    hybrid = snn_from_ann(model, None, "csqcfs", timesteps=4).eval()
    converted = sf.convert(model, None, "csqcfs", timesteps=4)
    pools = [m for m in hybrid.modules() if isinstance(m, SpikingMaxPool)]
    assert len(pools) == (4 if pool == "max" else 0)  # three block pools and the head's
    assert hybrid._input_neuron is not None  # the input current is still computed once
    with torch.no_grad():
        torch.testing.assert_close(hybrid(x), converted(x).mean(0), atol=1e-10, rtol=1e-10)
    # a checkpoint rebuilds the same network (in float32: weights rounded to 24 bits)
    save_checkpoint({"model": hybrid.state_dict(), "model_spec": hybrid.spikeforge_spec},
                    tmp_path / "hybrid.pt")
    reloaded = load_model(tmp_path / "hybrid.pt").double()
    assert len([m for m in reloaded.modules() if isinstance(m, SpikingMaxPool)]) == len(pools)
    with torch.no_grad():
        torch.testing.assert_close(reloaded(x), converted(x).mean(0), atol=1e-4, rtol=1e-4)
    hybrid.train()
    hybrid(x).square().sum().backward()  # BPTT runs through the rate-coded max-pools
    convs = [m for m in hybrid.modules() if isinstance(m, nn.Conv2d | nn.Linear)]
    assert all(m.weight.grad is not None and m.weight.grad.abs().sum() > 0 for m in convs)


def test_ablation_script_pool_first_cifarnet_is_the_same_function_after_training():
    """scripts/cifarnet_ablation.py's block order conv → max-pool → BN → act equals
    conv → BN → act → max-pool in eval mode when the BN scales are positive."""
    import importlib.util
    from pathlib import Path

    path = Path(__file__).resolve().parents[1] / "scripts" / "cifarnet_ablation.py"
    spec = importlib.util.spec_from_file_location("cifarnet_ablation", path)
    ablation = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(ablation)
    torch.manual_seed(0)
    options = {"num_classes": 10, "in_channels": 3, "activation": "relu", "pool": "max",
               "widths": (8, 16, 16), "head_pool": "max"}
    reference = create("cifarnet", **options).eval()
    for module in reference.modules():
        if isinstance(module, nn.BatchNorm2d):
            module.running_mean.normal_()
            module.running_var.uniform_(0.5, 2.0)
            module.weight.data.uniform_(0.5, 1.5)
            module.bias.data.normal_()
    reordered = ablation.pool_first(copy.deepcopy(reference))
    kinds = [type(m) for m in reordered.features]
    assert kinds[2:6] == [nn.Conv2d, nn.MaxPool2d, nn.BatchNorm2d, nn.ReLU]
    assert kinds.count(nn.MaxPool2d) == 3
    x = torch.randn(4, 3, 32, 32)
    out = reordered.features(x)
    torch.testing.assert_close(out, reference.features(x))
    assert out.abs().sum() > 0

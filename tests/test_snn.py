"""Direct SNN training: spiking zoo models, the held dropout mask, training on real data,
kill-and-resume equality and divergence handling."""

from __future__ import annotations

import copy
import json

import pytest
import torch

import spikeforge as sf
import spikeforge.train.loop as loop
from spikeforge.config import ConfigError, from_dict
from spikeforge.data import BatchLoader, load_dataset
from spikeforge.models.spiking import create_snn
from spikeforge.neurons import SpikingNeuron, TimeDropout
from spikeforge.train import TrainConfig, TrainingDiverged, fit, load_model

CONFIG = {  # over conftest's TINY_MNIST
    "kind": "snn", "seed": 0,
    "data": {"batch_size": 64, "train_subset": 1200, "test_subset": 300},
    "model": {"options": {"dropout": 0.2}},
    "optim": {"name": "adamw", "lr": 0.002, "weight_decay": 0.0, "epochs": 2},
    "snn": {"timesteps": 4, "encoder": "poisson",
            "neuron": {"leak": 0.99, "surrogate": "atan"}},
}
# the kill-and-resume and divergence tests compare runs step for step: 10 steps per epoch
SHORT = {**CONFIG, "data": {**CONFIG["data"], "train_subset": 640, "test_subset": 150}}


def test_spiking_zoo_model_shapes_and_layers():
    snn = create_snn("vgg7", timesteps=3, encoder="direct", in_channels=3, dropout=0.1,
                     neuron={"leak": 0.9, "surrogate": "lee"})
    lifs = [m for m in snn.modules() if isinstance(m, SpikingNeuron)]
    assert lifs and all(m.timesteps == 3 and m.surrogate == "lee" for m in lifs)
    assert any(isinstance(m, TimeDropout) for m in snn.modules())
    assert not any(isinstance(m, torch.nn.Dropout) for m in snn.modules())
    x = torch.randn(2, 3, 32, 32)
    out = snn(x)
    assert out.shape == (2, 10)
    out.sum().backward()
    grads = [p.grad for p in snn.parameters() if p.grad is not None]
    assert len(grads) == len(list(snn.parameters()))  # the gradient reaches every layer
    assert all(torch.isfinite(g).all() for g in grads)
    assert grads[0].abs().sum() > 0


def test_spiking_average_pooling_passes_spikes(tmp_path):
    snn = create_snn("cnn_small", timesteps=4, in_channels=1, pool_threshold=0.75)
    pools = [m for m in snn.modules() if isinstance(m, torch.nn.Sequential)
             and isinstance(m[0], torch.nn.AvgPool2d)]
    assert len(pools) == 2 and all(p[1].threshold.item() == 0.75 for p in pools)
    seen = []
    pools[0].register_forward_hook(lambda m, a, out: seen.append(out))
    snn(torch.rand(3, 1, 28, 28))
    assert set(seen[0].unique().tolist()) <= {0.0, 1.0}  # spikes, not rates
    torch.save({"model": snn.state_dict(), "model_spec": snn.spikeforge_spec}, tmp_path / "c.pt")
    assert load_model(tmp_path / "c.pt").spikeforge_spec["snn"]["pool_threshold"] == 0.75


def test_time_dropout_holds_its_mask_over_all_steps():
    drop = TimeDropout(0.5).train()
    torch.manual_seed(0)
    out = drop(torch.ones(4 * 3, 50), timesteps=4).unflatten(0, (4, 3))
    assert torch.equal(out[0], out[1]) and torch.equal(out[0], out[3])
    assert 0.3 < (out[0] == 0).double().mean() < 0.7
    assert torch.equal(drop.eval()(torch.ones(8, 5), timesteps=4), torch.ones(8, 5))


def test_snn_trains_on_real_digits_and_reloads(tmp_path, train_config):
    result = fit(train_config(tmp_path / "run", CONFIG))
    assert result.test_accuracy > 75.0  # Poisson input, T = 4, 1200 images, 2 epochs
    model = load_model(tmp_path / "run" / "checkpoint.pt")
    assert model.timesteps == 4 and model.encoder == "poisson"
    x = torch.rand(5, 1, 28, 28)
    torch.manual_seed(1)
    a = model(x)
    torch.manual_seed(1)
    assert torch.equal(a, model(x))  # Poisson input from the seeded global RNG
    # the trained network simulated by the converter: the same neurons, the same output
    direct = load_model(tmp_path / "run" / "checkpoint.pt")
    direct.encoder = "direct"
    snn = sf.convert(direct, None, "snn", progress=False)
    assert snn.timesteps == 4 and snn.info["initial"] == "zero"
    with torch.no_grad():
        torch.testing.assert_close(snn(x).mean(0), direct(x), atol=1e-5, rtol=1e-5)
    test = BatchLoader(load_dataset("mnist_demo", "test").subset(300), 150)
    res = sf.evaluate(snn, test, progress=False)
    assert res.accuracy[-1] > 75.0 and res.sops_per_sample > 0
    assert all(0 < rate < 1 for rate in res.firing_rates.values())
    with pytest.raises(sf.ConversionError, match="simulate it with method='snn'"):
        sf.convert(direct, [x], "threshold_balancing", progress=False)
    with pytest.raises(sf.ConversionError, match="this model has none"):
        sf.convert(torch.nn.Sequential(torch.nn.Linear(4, 4), torch.nn.ReLU()), None, "snn")


def test_snn_trains_with_bf16_autocast_where_the_cpu_has_it(tmp_path, train_config,
                                                            monkeypatch):
    """The BPTT step autocast to bf16 (synaptic layers; membranes and surrogate gradients
    stay float32) learns as float32 does. On a CPU without native bf16 this emulates it."""
    changes = {**CONFIG, "snn": {**CONFIG["snn"], "encoder": "direct", "timesteps": 2},
               "optim": {**CONFIG["optim"], "epochs": 1}}
    f32 = fit(train_config(tmp_path / "f32", {**changes, "run": {"amp": False}}))
    monkeypatch.setattr(loop, "native_bf16", lambda device: True)  # run.amp: true chooses it
    bf16 = fit(train_config(tmp_path / "bf16", changes))
    record = json.loads((tmp_path / "bf16" / "results.json").read_text())
    assert record["precision"] == "bfloat16"
    assert json.loads((tmp_path / "f32" / "results.json").read_text())["precision"] == "float32"
    assert f32.test_accuracy > 60.0 and bf16.test_accuracy > 60.0  # chance: 10%
    # 300 test images after one short epoch: over seeds 0-5 bf16 − float32 ran from −3.7 to
    # +1.3 points (rounding sends the two runs apart), a broken bf16 step falls far lower
    assert abs(bf16.test_accuracy - f32.test_accuracy) < 5.0


def assert_same_state(a: dict, b: dict) -> None:
    """Two saved model states hold the same keys and bit-identical values."""
    assert a.keys() == b.keys()
    assert all(torch.equal(x, b[k]) if isinstance(x, torch.Tensor) else x == b[k]
               for k, x in a.items())


@pytest.fixture(scope="module")
def whole(tmp_path_factory, train_config):
    """The uninterrupted run that the kill-and-resume tests compare with."""
    return fit(train_config(tmp_path_factory.mktemp("snn") / "whole", SHORT))


def test_killed_and_resumed_snn_training_equals_an_uninterrupted_one(tmp_path, train_config,
                                                                     kill_and_resume, whole):
    resumed = kill_and_resume(train_config(tmp_path / "killed", SHORT), epoch=2)
    assert [h["test_accuracy"] for h in resumed.history] == \
        [h["test_accuracy"] for h in whole.history]
    a = torch.load(whole.out_dir / "checkpoint.pt", weights_only=True)["model"]
    b = torch.load(tmp_path / "killed" / "checkpoint.pt", weights_only=True)["model"]
    assert_same_state(a, b)


def test_a_kill_within_an_epoch_resumes_from_the_last_step_checkpoint(tmp_path, monkeypatch,
                                                                     train_config, whole):
    """With ``run.checkpoint_minutes`` tiny every step is checkpointed; a kill during step 7 of
    epoch 2 leaves the checkpoint after step 6, and resuming from it gives the same weights,
    losses and accuracies as a run that was never interrupted."""
    cfg = train_config(tmp_path / "killed", SHORT, "run.checkpoint_minutes=1.0e-9")
    real, steps = loop.F.cross_entropy, []

    def killed_at_step_17(*args, **kwargs):
        if torch.is_grad_enabled():
            steps.append(1)
            if len(steps) == 17:  # 10 steps per epoch: epoch 2, step 7
                raise KeyboardInterrupt
        return real(*args, **kwargs)

    monkeypatch.setattr(loop.F, "cross_entropy", killed_at_step_17)
    with pytest.raises(KeyboardInterrupt):
        fit(cfg)
    monkeypatch.setattr(loop.F, "cross_entropy", real)
    saved = torch.load(tmp_path / "killed" / "checkpoint.pt", weights_only=True)
    assert saved["epoch"] == 1 and saved["partial"]["step"] == 6
    assert saved["partial"]["count"] == 6 * 64
    resumed = fit(cfg, resume=True)
    for a, b in zip(whole.history, resumed.history, strict=True):
        for key in ("train_loss", "train_accuracy", "test_loss", "test_accuracy"):
            assert a[key] == b[key], key
    a = torch.load(whole.out_dir / "checkpoint.pt", weights_only=True)
    b = torch.load(tmp_path / "killed" / "checkpoint.pt", weights_only=True)
    assert a["partial"] is None and b["partial"] is None
    assert_same_state(a["model"], b["model"])


def test_exploding_snn_loss_stops_with_the_epoch_and_step(tmp_path, monkeypatch, train_config):
    real = loop.F.cross_entropy
    steps = []

    def poisoned(*args, **kwargs):
        if torch.is_grad_enabled():  # training steps, not the test-set evaluation
            steps.append(1)
        loss = real(*args, **kwargs)
        return loss * float("nan") if len(steps) == 17 else loss

    monkeypatch.setattr(loop.F, "cross_entropy", poisoned)
    cfg = train_config(tmp_path / "nan", SHORT)
    with pytest.raises(TrainingDiverged, match=r"loss became nan at epoch 2, step 7"):
        fit(cfg)
    saved = torch.load(tmp_path / "nan" / "checkpoint.pt", weights_only=True)
    assert saved["epoch"] == 1  # the last good checkpoint is kept


def test_snn_config_errors_name_the_key():
    with pytest.raises(ConfigError, match="'snn.neuron.surrogate'.*valid choices.*'atan'"):
        from_dict(TrainConfig, {"kind": "snn", "snn": {"neuron": {"surrogate": "tanh"}}})
    with pytest.raises(ConfigError, match="'snn.encoder'"):
        from_dict(TrainConfig, {"kind": "snn", "snn": {"encoder": "rate"}})


def test_hybrid_snn_starts_as_the_converted_one_and_fine_tunes(tmp_path, train_config):
    from spikeforge.train.hybrid import snn_from_ann

    ann_cfg = {k: v for k, v in CONFIG.items() if k not in ("kind", "snn")}
    fit(train_config(tmp_path / "ann", ann_cfg, "optim.epochs=1"))
    ann = load_model(tmp_path / "ann" / "checkpoint.pt")
    train = load_dataset("mnist_demo", "train")
    calibration = [x for x, _ in BatchLoader(train.subset(512, seed=0), 256)]
    x = next(iter(BatchLoader(load_dataset("mnist_demo", "test").subset(16), 16)))[0]
    options = {"initial": "half", "channelwise": True}
    hybrid = snn_from_ann(ann, calibration, timesteps=2, **options).eval()
    converted = sf.convert(ann, calibration, timesteps=2, progress=False, **options)
    with torch.no_grad():
        torch.testing.assert_close(hybrid(x), converted(x).mean(0), atol=1e-4, rtol=1e-4)
    with pytest.raises(sf.ConversionError, match="binary-spike method"):
        snn_from_ann(ann, calibration, "augmapping")

    cfg = train_config(tmp_path / "hybrid", CONFIG, "optim.epochs=1")
    cfg.snn.timesteps, cfg.snn.encoder = 1, "direct"
    cfg.snn.init_from = str(tmp_path / "ann" / "checkpoint.pt")
    cfg.snn.init_options = options
    result = fit(cfg)
    before = result.summary["initial_test_accuracy"]
    print(f"hybrid T=1: converted {before:.2f}% -> fine-tuned {result.test_accuracy:.2f}%")
    assert result.test_accuracy > before  # one epoch of BPTT at T = 1 repairs the conversion
    reloaded = load_model(tmp_path / "hybrid" / "checkpoint.pt")
    lifs = [m for m in reloaded.modules() if isinstance(m, SpikingNeuron)]
    assert all(m.emit == "value" and m.reset == "subtract" for m in lifs)
    assert lifs[0].threshold.numel() > 1  # per-channel thresholds survive the checkpoint


def test_spikes_saved_as_bytes_give_exactly_the_same_gradients():
    from spikeforge.neurons.modules import compact_saved_spikes, mark_spikes

    conv = torch.nn.Conv2d(3, 4, 3)
    spikes = (torch.rand(2, 3, 8, 8) > 0.5).float()
    grads = []
    for compact in (False, True):
        conv.zero_grad()
        s = spikes.clone().requires_grad_(True)
        if compact:
            with compact_saved_spikes():
                y = conv(mark_spikes(s))
        else:
            y = conv(s)
        y.square().sum().backward()
        grads.append((conv.weight.grad.clone(), s.grad.clone()))
    assert torch.equal(grads[0][0], grads[1][0]) and torch.equal(grads[0][1], grads[1][1])


@pytest.mark.parametrize(("name", "first"), [("cnn_small", "features.2"),
                                             ("resnet7", "stem.2"), ("vgg7", "features.2")])
def test_direct_input_current_is_computed_once_per_image_with_the_same_result(name, first):
    torch.manual_seed(0)
    once = create_snn(name, timesteps=4, encoder="direct", in_channels=3,
                      neuron={"leak": 0.9, "surrogate": "atan"}).double()
    every_step = copy.deepcopy(once)
    every_step._input_neuron = None  # the first layers on all T·B rows, as before
    assert once._input_neuron == first
    assert create_snn(name, timesteps=4, encoder="poisson")._input_neuron is None
    calls = []
    conv = next(m for m in once.modules() if isinstance(m, torch.nn.Conv2d))
    conv.register_forward_hook(lambda m, i, o: calls.append(o.shape[0]))
    x = torch.randn(6, 3, 32, 32, dtype=torch.float64)  # float64: no spike flips on ties
    torch.manual_seed(1)
    a = once(x)
    torch.manual_seed(1)  # the same dropout masks
    b = every_step(x)
    assert calls == [6]  # the first conv saw each image once, not T = 4 times
    torch.testing.assert_close(a, b, atol=1e-12, rtol=1e-12)
    a.square().sum().backward()
    b.square().sum().backward()
    for (key, p), q in zip(once.named_parameters(), every_step.parameters(), strict=True):
        torch.testing.assert_close(p.grad, q.grad, atol=1e-10, rtol=1e-10, msg=key)
    for (key, r), s in zip(once.named_buffers(), every_step.named_buffers(), strict=True):
        # BN's running variance: its n/(n − 1) correction counts B·H·W values, not T·B·H·W
        tolerance = 2 / (6 * 32 * 32) if key.endswith("running_var") else 1e-12
        torch.testing.assert_close(r, s[1], atol=1e-12, rtol=tolerance, msg=key)


def test_time_folding_keeps_a_channels_last_input_channels_last():
    snn = create_snn("cnn_small", timesteps=3, encoder="direct", in_channels=3)
    x = torch.rand(2, 3, 8, 8)
    cl = x.contiguous(memory_format=torch.channels_last)
    folded = [snn._time_folded(v, "direct") for v in (x, cl)]
    assert folded[1].is_contiguous(memory_format=torch.channels_last)
    assert torch.equal(folded[0], folded[1])


@pytest.mark.parametrize("kernel", [2, 3])
@pytest.mark.parametrize("layout", [torch.channels_last, torch.contiguous_format])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_tiled_average_pool_has_atens_gradient(kernel, layout, dtype):
    """The tiled pool's backward spreads ∂L/∂y / k² over the windows: ATen's gradient bit for
    bit (also where floor mode drops a row and a column), in the input's memory format,
    with an incoming gradient of either layout; settings whose windows overlap stay as
    they are."""
    from spikeforge.nn.pooling import TiledAvgPool2d

    pool = TiledAvgPool2d.from_pool(torch.nn.AvgPool2d(kernel))
    assert isinstance(pool, TiledAvgPool2d)
    assert type(TiledAvgPool2d.from_pool(torch.nn.AvgPool2d(3, stride=2))) is torch.nn.AvgPool2d
    gen = torch.Generator().manual_seed(0)
    x = torch.rand(3, 5, 7 * kernel + 1, 6 * kernel + 1, generator=gen).to(dtype)
    x = x.contiguous(memory_format=layout)
    grads = []
    for module in (torch.nn.AvgPool2d(kernel), pool):
        xx = x.clone().requires_grad_(True)
        y = module(xx)
        g = torch.randn(y.shape, generator=torch.Generator().manual_seed(1)).to(dtype)
        y.backward(g.contiguous())  # NCHW, as from a flatten
        grads.append((y.detach(), xx.grad))
    (y_ref, g_ref), (y_new, g_new) = grads
    assert torch.equal(y_new, y_ref) and torch.equal(g_new, g_ref)
    assert g_new.is_contiguous(memory_format=layout)
    assert (g_new[..., -1, :] == 0).all() and (g_new[..., 0, 0] != 0).all()


def test_spiking_model_pools_with_the_tiled_pool():
    from spikeforge.nn.pooling import TiledAvgPool2d

    snn = create_snn("vgg7", timesteps=2, encoder="direct", in_channels=3)
    pools = [m for m in snn.modules() if isinstance(m, torch.nn.AvgPool2d)]
    assert pools and all(isinstance(m, TiledAvgPool2d) for m in pools)
    converted = sf.convert(snn, [torch.rand(2, 3, 32, 32)], "snn", progress=False)
    assert converted(torch.rand(2, 3, 32, 32)).shape == (2, 2, 10)  # traced as a pool

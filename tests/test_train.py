"""ANN training on real (bundled) MNIST: learning, exact resume after a kill, divergence
handling, safe checkpoints, DDP on two CPU processes."""

from __future__ import annotations

import json
import math
import os
import pickle
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from spikeforge.train import (
    CheckpointError,
    TrainingDiverged,
    fit,
    load_checkpoint,
    load_model,
)
from spikeforge.train.loop import lr_factor

TINY = {  # over conftest's TINY_MNIST
    "seed": 1,
    "data": {"batch_size": 50, "eval_batch_size": 500, "train_subset": 1500,
             "test_subset": 500, "augment": {"crop_padding": 2}},
    "optim": {"lr": 0.05, "epochs": 2, "warmup_epochs": 0.2},
}


def test_lr_schedule_warmup_then_cosine():
    assert lr_factor(0, 100, 10, "cosine") == pytest.approx(0.1)
    assert lr_factor(9, 100, 10, "cosine") == pytest.approx(1.0)
    assert lr_factor(10, 100, 10, "cosine") == pytest.approx(1.0)
    assert lr_factor(55, 100, 10, "cosine") == pytest.approx(0.5)
    assert lr_factor(100, 100, 10, "cosine") == pytest.approx(0.0, abs=1e-12)
    assert lr_factor(70, 100, 0, "constant") == 1.0


def test_training_learns_and_writes_everything(tmp_path, train_config):
    result = fit(train_config(tmp_path, TINY))
    assert result.test_accuracy > 85.0, result.history
    assert result.history[1]["train_loss"] < result.history[0]["train_loss"]
    lines = (tmp_path / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(line)["epoch"] for line in lines] == [1, 2]
    summary = json.loads((tmp_path / "results.json").read_text())
    assert summary["test_accuracy"] == result.test_accuracy
    assert summary["finished"] is True and summary["epochs_planned"] == 2
    assert summary["provenance"]["seed"] == 1
    assert summary["provenance"]["config"]["data"]["dataset"] == "mnist_demo"
    # the checkpoint rebuilds the same network and reproduces the accuracy
    model = load_model(tmp_path / "checkpoint.pt")
    from spikeforge.data import BatchLoader, load_dataset
    from spikeforge.train import loss_and_accuracy

    test = load_dataset("mnist_demo", "test").subset(500, seed=1)
    _, acc = loss_and_accuracy(model, BatchLoader(test, 250))
    assert acc == pytest.approx(result.test_accuracy)


def test_provenance_names_the_loaded_commit_and_marks_uncommitted_changes(tmp_path):
    from spikeforge.runtime import describe_checkout, git_commit, machine_info

    env = {**os.environ, "GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@t",
           "GIT_COMMITTER_NAME": "t", "GIT_COMMITTER_EMAIL": "t@t"}

    def git(*args: str) -> str:
        return subprocess.run(["git", *args], cwd=tmp_path, env=env, check=True,
                              capture_output=True, text=True).stdout.strip()

    assert describe_checkout(tmp_path) is None  # not a checkout
    git("init", "-q")
    (tmp_path / "f.py").write_text("a = 1\n")
    git("add", "f.py")
    git("commit", "-qm", "one")
    head = git("rev-parse", "HEAD")
    assert describe_checkout(tmp_path) == head
    (tmp_path / "untracked.txt").write_text("ignored")
    assert describe_checkout(tmp_path) == head
    (tmp_path / "f.py").write_text("a = 2\n")
    assert describe_checkout(tmp_path) == head + "+dirty"
    assert git_commit() is git_commit()  # looked up once per process
    assert machine_info()["cpu_capability"] == torch.backends.cpu.get_cpu_capability()


def _weights(path: Path) -> dict[str, torch.Tensor]:
    return load_checkpoint(path)["model"]


def test_resume_after_kill_gives_identical_weights(tmp_path, train_config):
    """SIGKILL a real training process during epoch 2, resume, and compare with a run that was
    never interrupted: the weights must be bit-identical."""
    epochs = "optim.epochs=3"
    straight = fit(train_config(tmp_path / "straight", TINY, epochs))
    config = train_config.yaml(tmp_path / "cfg.yaml", tmp_path / "killed", TINY, epochs)
    cmd = [sys.executable, "-m", "spikeforge.cli", "train", str(config)]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    ckpt = tmp_path / "killed" / "checkpoint.pt"
    deadline = time.time() + 120
    while not ckpt.exists() and time.time() < deadline and proc.poll() is None:
        time.sleep(0.02)
    time.sleep(0.3)  # well into epoch 2
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert ckpt.exists()
    done = load_checkpoint(ckpt)["epoch"]
    assert 1 <= done < 3, "the kill should land before the end of training"
    partial = json.loads((tmp_path / "killed" / "results.json").read_text())
    assert partial["finished"] is False and 1 <= partial["epochs"] <= done
    rc = subprocess.run([*cmd, "--resume"], capture_output=True, text=True, timeout=300)
    assert rc.returncode == 0, rc.stderr
    a, b = _weights(tmp_path / "straight" / "checkpoint.pt"), _weights(ckpt)
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), key
    history = [json.loads(x) for x in (tmp_path / "killed" / "metrics.jsonl").read_text()
               .splitlines()]
    assert [h["epoch"] for h in history] == [1, 2, 3]
    assert history[-1]["test_accuracy"] == straight.test_accuracy


def test_ctrl_c_leaves_a_valid_checkpoint_and_says_how_to_resume(tmp_path, train_config):
    config = train_config.yaml(tmp_path / "cfg.yaml", tmp_path / "run", TINY, "optim.epochs=3")
    cmd = [sys.executable, "-m", "spikeforge.cli", "train", str(config)]
    # a shell that starts a job in the background makes it ignore SIGINT, and Python then
    # never raises KeyboardInterrupt: give the child the default handling back
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    ckpt = tmp_path / "run" / "checkpoint.pt"
    deadline = time.time() + 120
    while not ckpt.exists() and time.time() < deadline and proc.poll() is None:
        time.sleep(0.02)
    time.sleep(0.3)  # into epoch 2
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130
    assert "interrupted; the last checkpoint is intact (resume with --resume)" in err
    assert load_checkpoint(ckpt)["epoch"] >= 1  # loads: complete, not half-written
    rc = subprocess.run([*cmd, "--resume"], capture_output=True, text=True, timeout=300)
    assert rc.returncode == 0 and load_checkpoint(ckpt)["epoch"] == 3, rc.stderr


def test_divergence_stops_with_epoch_and_step_and_keeps_checkpoint(tmp_path, train_config):
    fit(train_config(tmp_path, TINY, "optim.epochs=1"))
    before = _weights(tmp_path / "checkpoint.pt")
    with pytest.raises(TrainingDiverged, match=r"epoch 2, step \d+"):
        fit(train_config(tmp_path, TINY, "optim.epochs=2", "optim.lr=1e12"), resume=True)
    after = load_checkpoint(tmp_path / "checkpoint.pt")
    assert after["epoch"] == 1
    assert all(torch.equal(before[k], after["model"][k]) for k in before)


def test_resume_refuses_another_experiment(tmp_path, train_config):
    fit(train_config(tmp_path, TINY, "optim.epochs=1"))
    with pytest.raises(CheckpointError, match="differs in model.name;"):
        fit(train_config(tmp_path, TINY, "model.name=lenet"), resume=True)
    # where the files are is not part of the experiment: the same run resumes from a copy
    moved = fit(train_config(tmp_path, TINY, f"data.root={tmp_path / 'copy'}"), resume=True)
    assert len(moved.history) == 2


def test_checkpoint_errors_name_the_file(tmp_path, train_config):
    fit(train_config(tmp_path, TINY, "optim.epochs=1"))
    good = (tmp_path / "checkpoint.pt").read_bytes()
    truncated = tmp_path / "truncated.pt"
    truncated.write_bytes(good[: len(good) // 2])
    with pytest.raises(CheckpointError, match="truncated.pt.*truncated or corrupt"):
        load_checkpoint(truncated)

    class Exploit:
        def __reduce__(self):
            return (os.system, ("echo pwned > " + str(tmp_path / "pwned"),))

    evil = tmp_path / "evil.pt"
    with open(evil, "wb") as handle:
        pickle.dump({"model": Exploit()}, handle, protocol=2)
    with pytest.raises(CheckpointError, match="evil.pt.*refused"):
        load_checkpoint(evil)
    torch.save({"model": Exploit()}, tmp_path / "evil2.pt")
    with pytest.raises(CheckpointError, match="evil2.pt.*never executes code"):
        load_checkpoint(tmp_path / "evil2.pt")
    assert not (tmp_path / "pwned").exists()
    with pytest.raises(CheckpointError, match="missing.pt.*does not exist"):
        load_checkpoint(tmp_path / "missing.pt")


def test_ddp_two_cpu_processes_end_with_identical_weights(tmp_path, train_config):
    config = train_config.yaml(tmp_path / "cfg.yaml", tmp_path / "ddp", TINY, "optim.epochs=1")
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    rc = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2",
         "--standalone", "-m", "spikeforge.cli", "train",
         str(config)], capture_output=True, text=True, timeout=300, env=env)
    assert rc.returncode == 0, rc.stderr[-3000:]
    summary = json.loads((tmp_path / "ddp" / "results.json").read_text())
    assert summary["world_size"] == 2
    first, second = summary["rank_parameter_checksums"]
    assert math.isfinite(first) and first == second
    assert summary["test_accuracy"] > 50.0


class _Exploit:
    """Unpickling this would run a shell command."""

    def __reduce__(self):
        import os

        return (os.system, ("touch pwned",))


def test_a_malicious_or_truncated_checkpoint_is_refused_without_running_it(tmp_path,
                                                                           monkeypatch):
    from spikeforge.train import CheckpointError, load_model

    monkeypatch.chdir(tmp_path)
    torch.save({"model": {}, "payload": _Exploit()}, tmp_path / "evil.pt")
    with pytest.raises(CheckpointError, match="evil.pt.*refused.*never executes code"):
        load_model(tmp_path / "evil.pt")
    assert not (tmp_path / "pwned").exists()
    good = tmp_path / "good.pt"
    torch.save({"model": {"w": torch.ones(3)}}, good)
    (tmp_path / "cut.pt").write_bytes(good.read_bytes()[:200])
    with pytest.raises(CheckpointError, match="cut.pt.*truncated or corrupt"):
        load_model(tmp_path / "cut.pt")

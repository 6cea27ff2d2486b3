"""Resumable pre-training: a pre-training stopped between training states ends, once rerun, with the weights and
curves of one that never stopped, in this process and as a Ray Tune trial restarted after ``kill -9``."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from mlflow.tracking import MlflowClient
from safetensors.torch import load_file
from torch import nn

from kbench.core.config import load_config
from kbench.core.paths import cache_dir
from kbench.engine.pretrained import pretrained_model
from kbench.engine.pretraining import pretrain, training_state
from kbench.engine.trial import Trial, TrialSpec
from kbench.models.train_state import STATE_FILE, TrainState

# Dropout on, so that the restored global generators matter; the loader's worker builds the batches.
OVERRIDES = ["model.hidden_dropout_prob=0.1", "pretrain.save_every=4", "runtime.loader_workers=1"]


class Stop(Exception):
    """Stands for the process being killed."""


@pytest.mark.slow
def test_stopped_pretraining_resumes_to_the_uninterrupted_weights(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    cfg = load_config("smoke", OVERRIDES)
    whole, whole_history = pretrain(Trial(TrialSpec("kaleido", 3), cfg), TrainState(tmp_path / "whole", 4))

    clip, calls = nn.utils.clip_grad_norm_, []

    def stop_at_step_10(*args, **kwargs):
        calls.append(1)
        if len(calls) == 10:
            raise Stop
        return clip(*args, **kwargs)

    state = TrainState(tmp_path / "resumed", 4)
    monkeypatch.setattr(nn.utils, "clip_grad_norm_", stop_at_step_10)
    with pytest.raises(Stop):
        pretrain(Trial(TrialSpec("kaleido", 3), cfg), state)
    saved = torch.load(state.directory / STATE_FILE, weights_only=True)
    assert saved["progress"]["done"] == 8, "the last state saved before the stop is the one after step 8"

    monkeypatch.setattr(nn.utils, "clip_grad_norm_", clip)
    calls.clear()
    resumed, history = pretrain(Trial(TrialSpec("kaleido", 3), cfg), state)
    assert len(history) == len(whole_history) and history == whole_history
    for name, tensor in whole.state_dict().items():
        assert torch.equal(resumed.state_dict()[name], tensor), name


@pytest.mark.slow
def test_a_finished_pretraining_leaves_no_training_state() -> None:
    trial = Trial(TrialSpec("fashionbert", 5), load_config("smoke", ["pretrain.save_every=2"]))
    pretrained_model(trial)
    assert not training_state(trial).directory.exists()
    assert (cache_dir("checkpoints") / f"fashionbert-{trial.pretrain_key()}" / "model.safetensors").is_file()


@pytest.mark.slow
def test_a_trial_killed_mid_pretraining_resumes_when_tune_restarts_it(tmp_path: Path) -> None:
    """``kill -9`` of the trial's process during pre-training: Ray Tune restarts the trial, which resumes from the
    last training state and ends with the checkpoint an uninterrupted pre-training writes."""
    home = tmp_path / "home"
    overrides = ["pretrain.epochs=12", "pretrain.save_every=20", "runtime.cpus_per_trial=1"]
    argv = ["run", "--model", "fashionbert", "--task", "cr", "--profile", "smoke", "--retries", "1"]
    argv += ["--tracking-uri", f"sqlite:///{tmp_path / 'mlflow.db'}"]
    argv += [a for o in overrides for a in ("--set", o)]
    env = {**os.environ, "KBENCH_HOME": str(home), "PYTHONUNBUFFERED": "1"}
    log = tmp_path / "run.log"
    with open(log, "w") as out:
        run = subprocess.Popen([sys.executable, "-m", "kbench", *argv], cwd=tmp_path, env=env, stdout=out, stderr=out)
        deadline = time.monotonic() + 600
        states = []
        while not states and run.poll() is None and time.monotonic() < deadline:
            time.sleep(0.2)
            states = list(home.glob(f"checkpoints/*.resume/{STATE_FILE}"))
        assert states, "pre-training must have saved a training state"
        for pid in trial_processes(run.pid):
            os.kill(pid, signal.SIGKILL)
        assert run.wait(timeout=900) == 0, log.read_text()[-3000:]
    trials_output = "".join(p.read_text() for p in home.glob("tune/*/output.log"))  # the run's log, not the terminal
    assert "resuming from the training state after step" in trials_output

    cfg = load_config("smoke", overrides)
    trial = Trial(TrialSpec("fashionbert", 0), cfg)
    os.environ["KBENCH_HOME"], previous = str(home), os.environ["KBENCH_HOME"]
    try:
        checkpoint = load_file(cache_dir("checkpoints") / f"fashionbert-{trial.pretrain_key()}" / "model.safetensors")
    finally:
        os.environ["KBENCH_HOME"] = previous
    model, _ = pretrain(Trial(TrialSpec("fashionbert", 0), cfg))
    for name, tensor in model.state_dict().items():
        if name in checkpoint:
            assert torch.equal(checkpoint[name], tensor), name
    client = MlflowClient(tracking_uri=f"sqlite:///{tmp_path / 'mlflow.db'}")
    runs = client.search_runs(
        [client.get_experiment_by_name("kbench").experiment_id], "tags.`kbench.model` = 'fashionbert'"
    )
    assert [r.info.status for r in runs].count("FINISHED") == 1


def trial_processes(root: int) -> list[int]:
    """Pids of the processes below ``root`` that run a Ray Tune trial (another Ray on this machine is left be)."""
    parents, trials = {}, []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text()
                parents[int(entry.name)] = int(stat[stat.rindex(")") + 2 :].split()[1])
                if (entry / "cmdline").read_bytes().startswith(b"ray::ImplicitFunc"):
                    trials.append(int(entry.name))
            except (OSError, ValueError):
                continue

    def below_root(pid: int) -> bool:
        while pid > 1:
            if pid == root:
                return True
            pid = parents.get(pid, 0)
        return False

    return [pid for pid in trials if below_root(pid)]

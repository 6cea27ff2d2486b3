"""The pre-trained checkpoint cache: a checkpoint is reused only when its weights fit the model's parameters."""

from __future__ import annotations

import json
import logging

import pytest
import torch
from safetensors.torch import load_file, save_file

from kbench.core.config import load_config
from kbench.core.integrity import seal_dir
from kbench.core.paths import cache_dir
from kbench.engine.pretrained import pretrained_model
from kbench.engine.pretraining import HISTORY_FILE
from kbench.engine.trial import Trial, TrialSpec


@pytest.mark.slow
def test_a_checkpoint_that_does_not_fit_the_model_is_pre_trained_again(caplog: pytest.LogCaptureFixture) -> None:
    trial = Trial(TrialSpec("oscar", 7), load_config("smoke"))
    model, history = pretrained_model(trial)
    path = cache_dir("checkpoints") / f"oscar-{trial.pretrain_key()}"
    weights = path / "model.safetensors"
    # an older OSCAR, before the tagger kept its mean logit, with a marker in its curves
    state = load_file(weights)
    del state["vl.tagger.mean_logits"]
    save_file(state, weights, metadata={"format": "pt"})
    (path / HISTORY_FILE).write_text(json.dumps([{"stale": 1.0}]))
    seal_dir(path)  # intact, as that older kbench left it: only its parameters differ

    with caplog.at_level(logging.WARNING, logger="kbench.engine.pretrained"):
        again, curves = pretrained_model(trial)
    assert "does not fit the model" in caplog.text and "vl.tagger.mean_logits" in caplog.text
    assert curves == history  # pre-trained again, the same run as the first
    assert "vl.tagger.mean_logits" in load_file(weights)
    for name, tensor in model.state_dict().items():
        assert torch.equal(again.state_dict()[name], tensor), name

    caplog.clear()
    with caplog.at_level(logging.INFO, logger="kbench.engine.pretrained"):
        pretrained_model(trial)
    assert "reusing pre-trained checkpoint" in caplog.text and "does not fit" not in caplog.text

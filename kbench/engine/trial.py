"""One trial: one (model, variant, seed) going through the whole data flow, and what its stages share."""

from __future__ import annotations

import copy
import dataclasses
import random
from dataclasses import dataclass
from functools import cached_property
from typing import Any

import numpy as np
import torch
from transformers import BertModel, PreTrainedConfig

import kbench
from kbench.core.config import Config, apply_override, digest, without_scheduling
from kbench.core.device import resolve_device
from kbench.data import DatasetSplits, load_dataset
from kbench.data.text import load_tokenizer, tokenize
from kbench.engine.checkpoints import identity as checkpoint_identity
from kbench.engine.tracking import flatten
from kbench.features.batches import ModelData
from kbench.features.extraction import Job, load_features
from kbench.features.patch_features import Patching
from kbench.models.context import TaskContext
from kbench.models.zoo import MODELS, option_defaults, with_defaults
from kbench.tasks import include_cards


@dataclass(frozen=True)
class TrialSpec:
    """What distinguishes one trial: the zoo entry, its variant (a named set of overrides) and the seed."""

    model: str
    seed: int
    variant: str = "default"
    overrides: tuple[str, ...] = ()

    @property
    def label(self) -> str:
        variant = "" if self.variant == "default" else f"/{self.variant}"
        return f"{self.model}{variant}/seed{self.seed}"


def trial_config(base: Config, spec: TrialSpec) -> Config:
    """The base config with the variant's overrides applied."""
    cfg = copy.deepcopy(base)
    for item in spec.overrides:
        apply_override(cfg, item)
    return cfg


def config_hash(base: Config, spec: TrialSpec) -> str:
    """Hash of everything a trial's results depend on: its resolved config (less scheduling, and with its own
    entry's options in full rather than other entries'), model and seed."""
    return digest(results_config(base, spec), spec.model, spec.seed)


def config_key(base: Config, spec: TrialSpec) -> str:
    """``config_hash`` without the seed: equal for the seeds of one configuration, which tables aggregate."""
    return digest(results_config(base, spec), spec.model)


def results_config(base: Config, spec: TrialSpec) -> dict[str, Any]:
    """The trial's resolved config as its hashes read it: less scheduling, its own entry's options in full."""
    cfg = trial_config(base, spec)
    data = cfg.results_dict()
    data["models"] = resolved_options(cfg, spec.model)
    if cfg.model.checkpoint:  # the weights evaluated: runs of different checkpoints are never averaged together
        data["model"]["checkpoint"] = checkpoint_identity(cfg.model.checkpoint)
    return data


def model_options(cfg: Config, model: str) -> dict[str, Any]:
    """Keyword arguments of the zoo entry's config class: shared sizes plus ``models.<model>`` options."""
    sizes = dataclasses.asdict(cfg.model)
    sizes.pop("init_from")
    sizes.pop("checkpoint")
    return {**sizes, **cfg.models.get(model, {})}


def resolved_options(cfg: Config, model: str) -> dict[str, Any]:
    """``model_options`` with the config class's defaults filled in, so that naming an option's default value
    (as an ablation's reference column does) changes no hash and shares the checkpoint."""
    return with_defaults(MODELS.get(model), model_options(cfg, model))


def option_params(cfg: Config, model: str) -> dict[str, Any]:
    """The entry's own options in full, defaults included (``models.kaleido.kpg``...), as run params: what runs are
    filtered and compared by. BERT's arguments are left out (the shared sizes are ``model.*`` params)."""
    own = {k: v for k, v in resolved_options(cfg, model).items() if k not in _BERT_ARGUMENTS}
    return flatten({"models": {model: own}})


_BERT_ARGUMENTS = {*option_defaults(BertModel), "visual_feature_size"}  # sizes, and what the data fixes


def seed_everything(seed: int) -> None:
    """Seed Python's, NumPy's and torch's global generators (new heads' initialisation and dropout draw from them)."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


class Trial:
    """The state one trial's stages share: resolved config, data, tokenizer, features, device."""

    def __init__(self, spec: TrialSpec, base: Config) -> None:
        self.spec = spec
        self.base = base
        self.cfg = trial_config(base, spec)
        include_cards(self.cfg.runtime.include_paths)  # the user's task cards, in a Ray worker's process too
        self.config_hash = config_hash(base, spec)
        self.device = resolve_device(self.cfg.runtime.device)
        self.model_cls = MODELS.get(spec.model)
        self._data: dict[str, ModelData] = {}

    @cached_property
    def dataset(self) -> DatasetSplits:
        return load_dataset(self.cfg.data)

    @cached_property
    def tokenizer(self):
        return load_tokenizer(self.cfg.data.tokenizer)

    @cached_property
    def patching(self) -> Patching:
        """How the entry's images become patches (scheme, locked box, AKPM views), as its options say."""
        return self.model_cls.patching(self.model_cls.config_class(**model_options(self.cfg, self.spec.model)))

    def model_kwargs(self) -> dict[str, Any]:
        """The zoo config's arguments: sizes, options, and what the data fixes (vocabulary, feature size)."""
        kwargs = model_options(self.cfg, self.spec.model)
        kwargs["vocab_size"] = len(self.tokenizer)
        kwargs["visual_feature_size"] = self.data("train").features.dim
        return kwargs

    def model_config(self) -> PreTrainedConfig:
        """The zoo entry's config as the trial's options and data make it (what its hooks are given)."""
        return self.model_cls.config_class(**self.model_kwargs())

    def data(self, split: str) -> ModelData:
        """The model-ready train, dev or test split (tokenised and encoded once per trial)."""
        if split not in self._data:
            part = getattr(self.dataset, split)
            text = tokenize(self.tokenizer, list(part.meta["description"]), self.cfg.data.max_text_len)
            features = load_features(part, self.patching.for_split(split), self.cfg.features, self.device)
            self._data[split] = ModelData(part, text, features)
        return self._data[split]

    def pretrain_key(self) -> str:
        """Hash of what the pre-trained checkpoint depends on (shared by trials that agree on it)."""
        c = self.cfg
        text = (c.data.tokenizer, c.data.max_text_len, c.data.dev_fraction, c.data.dev_seed)
        return digest(
            kbench.__version__,
            self.spec.model,
            self.spec.seed,
            self.dataset.fingerprint,
            text,
            self.data("train").features.name,
            resolved_options(c, self.spec.model),
            c.model.init_from,
            without_scheduling(dataclasses.asdict(c.pretrain), "pretrain"),
        )

    def feature_jobs(self, splits: tuple[str, ...]) -> list[Job]:
        """The feature stores ``splits`` of this trial read, as extraction jobs."""
        return [(getattr(self.dataset, split), self.patching.for_split(split)) for split in splits]

    @cached_property
    def context(self) -> TaskContext:
        """The trial as its model's hooks and its tasks see it; one cache, so that ITR and TIR share one ITM
        fine-tuning and pre-training and its diagnostics one set of alignments."""
        return TaskContext(
            config=self.cfg,
            seed=self.spec.seed,
            device=self.device,
            tokenizer=self.tokenizer,
            patching=self.patching,
            load=self.data,
            dataset=self.dataset,
        )

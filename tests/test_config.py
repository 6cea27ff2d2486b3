"""Profiles, --set overrides and their errors, config hashes, and the registry."""

from __future__ import annotations

import re

import pytest

from kbench.core.config import PROFILES, apply_override, digest, load_config
from kbench.core.errors import KbenchError
from kbench.core.registry import Registry
from kbench.engine.trial import TrialSpec, config_hash, resolved_options, trial_config
from kbench.models.kaleido.model import KaleidoBertConfig


def test_profiles_load_and_differ() -> None:
    configs = {name: load_config(name) for name in PROFILES}
    assert configs["default"].model.hidden_size == 128
    assert configs["smoke"].model.hidden_size == 64
    assert configs["paper"].model.hidden_size == 768 and configs["paper"].model.num_hidden_layers == 12
    assert configs["paper"].data.max_text_len == 64 and configs["paper"].pretrain.batch_size == 256
    assert len({digest(c.to_dict()) for c in configs.values()}) == 3


@pytest.mark.parametrize(
    ("item", "path", "expected"),
    [
        ("pretrain.lr=1e-4", ("pretrain", "lr"), 1e-4),
        ("pretrain.epochs=2", ("pretrain", "epochs"), 2.0),
        ("model.init_from=/some/bert", ("model", "init_from"), "/some/bert"),
        ("model.init_from=null", ("model", "init_from"), None),
        ("data.synth.products_train=50", ("data", "synth", "products_train"), 50),
        ("runtime.device=cpu", ("runtime", "device"), "cpu"),
    ],
)
def test_overrides_are_typed(item: str, path: tuple[str, ...], expected: object) -> None:
    cfg = load_config("default", [item])
    node = cfg
    for name in path:
        node = getattr(node, name)
    assert node == expected and type(node) is type(expected)


def test_open_sections_take_any_key() -> None:
    cfg = load_config("smoke", ["models.fashionbert.adaptive_loss=true", "tasks.itr.queries=7"])
    assert cfg.models["fashionbert"]["adaptive_loss"] is True
    assert cfg.tasks["itr"]["queries"] == 7 and cfg.tasks["itr"]["finetune"]["epochs"] == 1


@pytest.mark.parametrize(
    ("item", "message"),
    [
        ("pretrain.lrr=1", "unknown config key 'pretrain.lrr'; did you mean lr?"),
        ("pretrain.lr", "malformed --set 'pretrain.lr': expected key=value"),
        ("=3", "malformed --set '=3'"),
        ("pretrain.epochs=many", "bad value 'many' for pretrain.epochs: expected float"),
        ("pretrain.batch_size=2.5", "bad value 2.5 for pretrain.batch_size: expected int"),
        ("pretrain.batch_size=true", "bad value True for pretrain.batch_size: expected int"),
        ("pretrain.lr.x=1", "pretrain.lr is a value, not a section"),
        ("nosuch=1", "unknown config key 'nosuch'"),
    ],
)
def test_bad_overrides_say_what_is_wrong(item: str, message: str) -> None:
    with pytest.raises(KbenchError) as err:
        load_config("default", [item])
    assert message in str(err.value)


def test_unknown_profile() -> None:
    with pytest.raises(KbenchError, match=re.escape("unknown profile 'smok'; did you mean smoke?")):
        load_config("smok")


def test_override_changes_hash() -> None:
    cfg = load_config("default")
    before = digest(cfg.to_dict())
    apply_override(cfg, "pretrain.lr=3e-4")
    assert digest(cfg.to_dict()) != before
    assert digest(load_config("default").to_dict()) == before


def test_trial_hash_sees_resolved_options_of_its_own_entry_only() -> None:
    cfg = load_config("default")
    plain = config_hash(cfg, TrialSpec("kaleido", 0))
    defaults_named = [
        TrialSpec("kaleido", 0, "kpg:kaleido+sod", ("models.kaleido.kpg=kaleido+sod",)),
        TrialSpec("kaleido", 0, "agm:agm", ("models.kaleido.agm=agm",)),
        TrialSpec("kaleido", 0, "other", ("models.fashionbert.adaptive_loss=true",)),
    ]
    assert [config_hash(cfg, spec) for spec in defaults_named] == [plain] * 3
    assert config_hash(cfg, TrialSpec("kaleido", 0, "kpg:kaleido", ("models.kaleido.kpg=kaleido",))) != plain
    assert config_hash(cfg, TrialSpec("kaleido", 1)) != plain
    options = resolved_options(trial_config(cfg, defaults_named[0]), "kaleido")
    assert (options["kpg"], options["agm"], options["akpm"], options["hidden_size"]) == (
        "kaleido+sod",
        "agm",
        "B+I~V",
        128,
    )


def test_registry() -> None:
    reg: Registry[type[Exception]] = Registry("widget", base=Exception)

    @reg.register("alpha")
    class Alpha(Exception):
        """Alpha widget: the first."""

    reg.register("lazy", "kbench.core.errors:KbenchError")
    assert reg.get("alpha") is Alpha and reg.describe("alpha") == "Alpha widget: the first."
    assert reg.get("lazy") is KbenchError and reg.names() == ["alpha", "lazy"]
    assert reg.describe("lazy").startswith("A problem with the user's input")
    with pytest.raises(ValueError, match="already registered"):
        reg.register("alpha", Alpha)
    with pytest.raises(TypeError, match="must be a Exception"):
        reg.register("bad", int)
    with pytest.raises(KbenchError, match=re.escape("unknown widget 'alpah'; did you mean alpha?")):
        reg.get("alpah")


def test_config_files_merge_onto_the_profile_before_set(tmp_path) -> None:
    path = tmp_path / "recipe.yaml"
    path.write_text("tasks:\n  cr:\n    finetune: {lr: 0.003, epochs: 4}\npretrain: {epochs: 2}\n")
    cfg = load_config("default", ["pretrain.epochs=3"], [path])
    assert cfg.tasks["cr"]["finetune"] == {"epochs": 4, "batch_size": 32, "lr": 0.003}  # merged, not replaced
    assert cfg.tasks["sub"] == load_config("default").tasks["sub"] and cfg.pretrain.epochs == 3.0


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("x: [", "is not valid YAML"),
        ("- 1\n", "expected a mapping of config keys"),
        ("pretrain: {lrr: 1}\n", "pretrain: unknown key 'lrr'; did you mean lr?"),
    ],
)
def test_bad_config_files_are_refused(tmp_path, text: str, message: str) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text(text)
    with pytest.raises(KbenchError, match=re.escape(message)):
        load_config("default", files=[path])
    with pytest.raises(KbenchError, match="cannot read config file"):
        load_config("default", files=[tmp_path / "missing.yaml"])


def test_scheduling_settings_change_no_hash_and_the_limit_does() -> None:
    """Where and how fast a trial runs never changes its hash (so it resumes whatever it is given); the products
    it sees do."""
    spec = TrialSpec("kaleido", 0)
    plain = config_hash(load_config("default"), spec)
    for item in (
        "runtime.loader_workers=4",
        "features.workers=3",
        "pretrain.save_every=7",
        "runtime.cpus_per_trial=8",
    ):
        assert config_hash(load_config("default", [item]), spec) == plain, item
    assert config_hash(load_config("default", ["data.limit=64"]), spec) != plain


def test_aag_settings_are_kaleidos_options_and_hashed_for_kaleido_only() -> None:
    """``models.kaleido.aag.*`` fills AAG's defaults key by key, reaches Kaleido's hash alone, and is checked."""
    cfg = load_config("default")
    plain = {m: config_hash(cfg, TrialSpec(m, 0)) for m in ("kaleido", "fashionbert")}
    epochs = TrialSpec("kaleido", 0, "aag", ("models.kaleido.aag.epochs=3",))
    assert resolved_options(trial_config(cfg, epochs), "kaleido")["aag"]["epochs"] == 3
    assert resolved_options(trial_config(cfg, epochs), "kaleido")["aag"]["crop_size"] == 56
    assert config_hash(cfg, epochs) != plain["kaleido"]
    assert config_hash(cfg, TrialSpec("kaleido", 0, "d", ("models.kaleido.aag.crop_size=56",))) == plain["kaleido"]
    other = TrialSpec("fashionbert", 0, "aag", ("models.kaleido.aag.epochs=3",))
    assert config_hash(cfg, other) == plain["fashionbert"]
    assert KaleidoBertConfig(aag={"epochs": 3}).aag["epochs"] == 3.0
    with pytest.raises(KbenchError, match=r"models.kaleido.aag: unknown key 'epoch'; did you mean epochs"):
        KaleidoBertConfig(aag={"epoch": 3})
    with pytest.raises(KbenchError, match=r"bad value 'many' for models.kaleido.aag: epochs"):
        KaleidoBertConfig(aag={"epochs": "many"})

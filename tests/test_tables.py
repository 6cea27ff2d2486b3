"""Tables rebuilt from a real MLflow store of fabricated finished runs (metrics, params, per-sample records), pinned
by golden files for every format; cells aggregate like with like and carry intervals from the per-sample records;
``kbench compare`` on the same store."""

from __future__ import annotations

import io
import os
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from sklearn.metrics import f1_score

from kbench.commands.cli import main
from kbench.core.config import load_config
from kbench.core.errors import KbenchError
from kbench.engine.ablations import BLOCKS
from kbench.engine.tracking import Tracking, TrialRun, flatten, open_experiment
from kbench.engine.trial import TrialSpec, config_key, trial_config
from kbench.metrics.significance import CAPTION_SCORES, bootstrap, half_width, items
from kbench.report.compare import compare_runs, pairs
from kbench.report.tables import (
    ABLATION_METRICS,
    FORMATS,
    Column,
    Samples,
    ablation_cells,
    build_ablation,
    build_main,
    label,
    load_runs,
    published,
    render,
    summarise,
)
from kbench.tasks import samples

GOLDEN = Path(__file__).parent / "golden"
QUERIES, IMAGES, CAPTIONS = 40, 30, 20  # test items per retrieval task, per classification task, of captioning
OLD_LR = "pretrain.lr=2e-05"  # kaleido's older runs; its newest run has the default profile's 0.001

RUNS = [
    # (model, variant, seed, profile, overrides, quality, with per-sample records), oldest first
    ("kaleido", "default", 0, "default", (OLD_LR,), 0.5, True),
    ("kaleido", "default", 1, "default", (OLD_LR,), 0.55, True),
    ("fashionbert", "default", 0, "default", (), 0.4, True),
    ("fashionbert", "default", 1, "default", (), 0.45, True),
    ("clip", "default", 0, "default", (), 0.2, True),  # one seed: a bootstrap interval
    ("vilbert", "default", 0, "default", (), 0.3, False),  # from before per-sample records: no interval
    ("fashionbert", "default", 0, "smoke", (), 0.9, True),  # another profile: never mixed into the default table
    ("kaleido", "agm:random", 0, "default", (), 0.3, True),
    ("kaleido", "agm:random", 1, "default", (), 0.32, True),
    ("kaleido", "agm:agm", 0, "default", (), 0.8, True),  # AGM clearly better than random
    ("kaleido", "agm:agm", 1, "default", (), 0.78, True),
    ("kaleido", "kpg:scale-fixed", 0, "default", (), 0.5, True),
    ("kaleido", "kpg:kaleido", 0, "default", (), 0.5, True),  # the same results as its baseline
    ("kaleido", "default", 0, "default", (), 0.6, True),  # the newest configuration of kaleido
]


def fabricate(quality: float, seed: int) -> dict[str, list[dict]]:
    """Per-sample records of every task: the items are the same in every run, the results depend on the seed and
    improve with ``quality``."""
    fixed, rng = np.random.default_rng(0), np.random.default_rng(seed + int(1000 * quality))
    out: dict[str, list[dict]] = {}
    for task in ("itr", "tir"):
        hits = rng.random(QUERIES) < quality
        ranks = np.where(hits, 1, rng.integers(1, 30, QUERIES))
        out[task] = [samples.retrieval_record(q, f"list{q}", int(r), None, 0.5) for q, r in enumerate(ranks)]
    for task, num_labels in (("cr", 4), ("sub", 6)):
        labels = fixed.integers(-1, num_labels, IMAGES)  # -1: unseen in training
        right = rng.random(IMAGES) < quality
        predictions = np.where(right & (labels >= 0), labels, rng.integers(0, num_labels, IMAGES))
        out[task] = [
            samples.classification_record(i, 100 + i, str(t), str(p), t, p, num_labels)
            for i, (t, p) in enumerate(zip(labels, predictions, strict=True))
        ]
    scores = rng.random((CAPTIONS, 4)) * 100 * quality
    out["fc"] = [
        samples.captioning_record(i, 100 + i, "a caption", ["a reference"], dict(zip(CAPTION_SCORES, s, strict=True)))
        for i, s in enumerate(scores)
    ]
    return out


def metrics_of(records: dict[str, list[dict]]) -> dict[str, float]:
    """The metrics a trial would log for ``records``, computed directly (BLEU-4 and METEOR as corpus scores that are
    not the per-caption means)."""
    out = {}
    for task in ("itr", "tir"):
        ranks = np.array([r["rank"] for r in records[task]])
        out |= {f"{task}/R{k}": 100 * float(np.mean(ranks <= k)) for k in (1, 5, 10)}
    for task in ("cr", "sub"):
        t = [r["label_id"] for r in records[task]]
        p = [r["prediction_id"] for r in records[task]]
        out[f"{task}/acc"] = 100 * float(np.mean(np.equal(t, p)))
        num_labels = records[task][0]["num_labels"]
        out[f"{task}/macro_f"] = f1_score(t, p, labels=range(num_labels), average="macro", zero_division=0)
    for m in CAPTION_SCORES:
        out[f"fc/{m}"] = float(np.mean([r["scores"][m] for r in records["fc"]])) + (0.5 if m == "BLEU-4" else 0.0)
    out["sums/SumR"] = sum(out[f"{t}/R{k}"] for t in ("itr", "tir") for k in (1, 5, 10))
    out["sums/SumCLS"] = sum(out[f"{t}/acc"] + 100 * out[f"{t}/macro_f"] for t in ("cr", "sub"))
    out["sums/SumCAP"] = sum(out[f"fc/{m}"] for m in CAPTION_SCORES)
    return out


def spec_of(model: str, variant: str, seed: int) -> TrialSpec:
    variants = {v.tag: v for block in BLOCKS.values() for v in block}
    if variant == "default":
        return TrialSpec(model, seed)
    return TrialSpec("kaleido", seed, variant, variants[variant].overrides("kaleido"))


def log_run(uri: str, experiment: str, spec: TrialSpec, profile: str, overrides: tuple, quality: float, **kw) -> str:
    """One finished trial run as ``kbench run`` logs it: tags, params, metrics and (unless ``legacy``) per-sample
    records and the seed-free config key."""
    base = load_config(profile, list(overrides))
    records = fabricate(quality, spec.seed)
    tags = {"model": spec.model, "variant": spec.variant, "seed": spec.seed, "profile": profile, "dataset": "synth"}
    tags |= {"protocol": "fashionbert-101 v1", "data_fingerprint": "synth-fp", **kw.get("tags", {})}
    if not kw.get("legacy"):
        tags["config_key"] = config_key(base, spec)
    with TrialRun(Tracking(uri, experiment), spec.label, tags) as run:
        run.log_params({**flatten(trial_config(base, spec).to_dict()), "model.name": spec.model, "seed": spec.seed})
        run.log_metrics(metrics_of(records))
        if not kw.get("legacy"):
            for task, rows in records.items():
                path = Path(kw["tmp"]) / run.run_id / samples.artifact_path(task)
                path.parent.mkdir(parents=True, exist_ok=True)
                path.write_text(samples.to_jsonl(rows))
                run.client.log_artifact(run.run_id, str(path), samples.ARTIFACT_DIR)
    return run.run_id


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> str:
    tmp = tmp_path_factory.mktemp("store")
    uri = f"sqlite:///{tmp / 'mlflow.db'}"
    experiment = open_experiment(uri, "tables")
    for model, variant, seed, profile, overrides, quality, with_samples in RUNS:
        spec = spec_of(model, variant, seed)
        log_run(uri, experiment, spec, profile, overrides, quality, tmp=tmp, legacy=not with_samples)
    limited = {"limit": 64}  # kbench run --limit 64
    log_run(
        uri,
        experiment,
        spec_of("fashionbert", "default", 0),
        "default",
        ("data.limit=64",),
        1.0,
        tmp=tmp,
        tags=limited,
    )
    failed = TrialRun(Tracking(uri, experiment), "failed", {"model": "fashionbert", "variant": "default", "seed": 2})
    failed.set_tags({"profile": "default", "dataset": "synth"})
    failed.log_metrics(metrics_of(fabricate(1.0, 2)))
    failed.__exit__(RuntimeError, None, None)  # a FAILED run never reaches a table
    return uri


def rows_of(csv: str) -> dict[str, list[str]]:
    """The rows of a main-table CSV by their model column."""
    return {line.split(",")[0]: line.split(",") for line in csv.splitlines()[1:]}


def keyless(text: str, store: str) -> str:
    """``text`` with the config keys of the store's runs, which move with the profiles' defaults, as ``<key>``."""
    for key in load_runs(store, "tables")["config_key"].dropna().unique():
        text = text.replace(key[:8], "<key>")
    return text


def test_csv_lines_up_the_tables_by_model_and_source() -> None:
    """A row one table has and another lacks (the paper reports a model in Table 2 only) leaves the other's cells
    empty on that line, never shifting the rows below it."""
    import pandas as pd

    def row(model: str, source: str, header: str, value: float) -> dict:
        return {"model": model, "source": source, "seeds": "", "interval": "", header: (value, None)}

    retrieval = [Column("SumR", "sums/SumR", "SumR")]
    classification = [Column("SumCLS", "sums/SumCLS", "SumCLS")]
    tables = [
        ("2", retrieval, [row("A", "paper", "SumR", 1.0), row("A (kbench)", "kbench", "SumR", 2.0)]),
        ("3", classification, [row("A (kbench)", "kbench", "SumCLS", 3.0)]),
    ]
    frame = pd.read_csv(io.StringIO(render(tables, "csv", "")))
    assert frame["model"].tolist() == ["A", "A (kbench)"]
    assert frame["SumR"].tolist() == [1.0, 2.0]
    assert frame["SumCLS"].isna().tolist() == [True, False] and frame["SumCLS"].iloc[1] == 3.0


@pytest.mark.slow
@pytest.mark.parametrize("fmt", FORMATS)
def test_main_table_matches_golden(store: str, fmt: str) -> None:
    text = keyless(build_main(store, "tables", fmt, profile="default", dataset="synth"), store)
    golden = GOLDEN / f"main.{fmt}"
    if os.environ.get("KBENCH_UPDATE_GOLDEN"):
        golden.write_text(text)
    assert text == golden.read_text()


@pytest.mark.slow
def test_default_selection_is_the_newest_profile(store: str) -> None:
    smoke = build_main(store, "tables", "csv", profile="smoke")
    assert list(rows_of(smoke)) == ["FashionBERT", "FashionBERT (kbench)"]
    default = rows_of(build_main(store, "tables", "csv"))  # the newest run is kaleido's, on the default profile
    assert default["FashionBERT (kbench)"][2] == "2"


@pytest.mark.slow
def test_two_configurations_are_never_averaged(store: str) -> None:
    runs = load_runs(store, "tables")
    kaleido = runs[(runs["model"] == "kaleido") & (runs["variant"] == "default")]
    newest = kaleido.iloc[0]
    text = build_main(store, "tables", "md", profile="default", dataset="synth")
    row = next(line for line in text.splitlines() if line.startswith("| Kaleido-BERT (kbench)"))
    cells = [c.strip() for c in row.strip(" |").split("|")]
    assert cells[2:4] == ["1", "bootstrap"]  # the newest config's one seed, not the three runs
    assert cells[4].startswith(f"{newest['itr/R1']:.2f} ± ")
    note = f"kaleido: newest config's runs ({newest['config_key'][:8]}) shown; other runs differ in pretrain.lr "
    assert note + "(0.001 vs 2e-05); pick one with --config-hash." in text


@pytest.mark.slow
def test_config_hash_picks_a_configuration(store: str) -> None:
    runs = load_runs(store, "tables")
    old = runs[(runs["model"] == "kaleido") & (runs["params"].map(lambda p: p["pretrain.lr"]) == "2e-05")]
    assert len(old) == 2 and old["config_key"].nunique() == 1
    key = old["config_key"].iloc[0]
    text = build_main(store, "tables", "csv", profile="default", dataset="synth", config_hash=key[:6])
    row = rows_of(text)["Kaleido-BERT (kbench)"]
    mean, half, _ = summarise(old["itr/R1"])
    assert row[2:5] == ["2", "t over seeds", f"{mean:.6g}"] and float(row[5]) == pytest.approx(half, rel=1e-5)
    assert rows_of(text)["FashionBERT (kbench)"][2] == "2"  # other models keep theirs
    caption = build_main(store, "tables", "md", profile="default", dataset="synth", config_hash=key[:6])
    assert (
        f"kaleido: config {key[:8]} (--config-hash) shown; other runs differ in pretrain.lr (2e-05 vs 0.001)"
        in caption
    )
    with pytest.raises(KbenchError, match="no finished runs with config key fff"):
        build_main(store, "tables", "md", profile="default", config_hash="fff")


@pytest.mark.slow
def test_match_keeps_the_runs_kbench_run_would_make(store: str) -> None:
    old = rows_of(build_main(store, "tables", "csv", match=load_config("default", [OLD_LR])))
    assert list(old) == ["Kaleido-BERT", "Kaleido-BERT (kbench)"] and old["Kaleido-BERT (kbench)"][2] == "2"
    default = rows_of(build_main(store, "tables", "csv", match=load_config("default")))
    assert default["Kaleido-BERT (kbench)"][2] == "1" and default["FashionBERT (kbench)"][2] == "2"
    assert "ViLBERT-style (kbench)" in default  # a run without a config key tag, matched on its params
    smoke = rows_of(build_main(store, "tables", "csv", match=load_config("smoke")))
    assert list(smoke) == ["FashionBERT", "FashionBERT (kbench)"] and smoke["FashionBERT (kbench)"][2] == "1"
    with pytest.raises(KbenchError, match="no finished runs match profile 'default' with the given --set"):
        build_main(store, "tables", "csv", match=load_config("default", ["pretrain.lr=0.5"]))


@pytest.mark.slow
def test_single_seed_cells_carry_a_bootstrap_interval(store: str) -> None:
    runs = load_runs(store, "tables")
    clip = runs[runs["model"] == "clip"].iloc[0]
    records = {t: samples.read_samples(store, clip["run_id"], t).to_dict("records") for t in ("itr", "tir")}
    run = {t: items(t, r) for t, r in records.items()}
    expected = half_width(bootstrap(run, "sums/SumR"))
    row = rows_of(build_main(store, "tables", "csv", profile="default", dataset="synth"))["CLIP-style (kbench)"]
    assert row[2:4] == ["1", "bootstrap"] and float(row[4 + 2 * 6 + 1]) == pytest.approx(expected, rel=1e-5)
    sums_r = [100 * np.mean(np.array([r["rank"] for r in records[t]]) <= k) for t in records for k in (1, 5, 10)]
    assert float(row[4 + 2 * 6]) == pytest.approx(sum(sums_r))


@pytest.mark.slow
def test_runs_without_per_sample_records_have_no_interval(store: str) -> None:
    text = build_main(store, "tables", "md", profile="default", dataset="synth")
    row = next(line for line in text.splitlines() if line.startswith("| ViLBERT-style (kbench)"))
    cells = [c.strip() for c in row.strip(" |").split("|")]
    assert cells[2:4] == ["1", "n/a"] and "±" not in row
    assert "runs without per-sample records have no interval (n/a)" in text


def test_labels_mark_kbench_rows_and_stand_ins() -> None:
    assert [label(m) for m in ("kaleido", "fashionbert", "vilbert", "oscar", "clip")] == [
        "Kaleido-BERT (kbench)",
        "FashionBERT (kbench)",
        "ViLBERT-style (kbench)",
        "OSCAR-style (kbench)",
        "CLIP-style (kbench)",
    ]


@pytest.mark.slow
def test_limited_runs_are_never_mixed_with_full_ones(store: str) -> None:
    full = rows_of(build_main(store, "tables", "csv", profile="default", dataset="synth"))
    assert full["FashionBERT (kbench)"][2] == "2"
    limited = build_main(store, "tables", "csv", profile="default", dataset="synth", limit=64)
    assert list(rows_of(limited)) == ["FashionBERT", "FashionBERT (kbench)"]
    assert rows_of(limited)["FashionBERT (kbench)"][4] == "100"  # the limited run alone (quality 1: R1 = 100)
    caption = build_main(store, "tables", "md", profile="default", dataset="synth", limit=64)
    assert "limited to the first 64 products of each split" in caption
    with pytest.raises(KbenchError, match="no finished --limit 5 kbench runs"):
        build_main(store, "tables", "md", limit=5)


def test_mean_and_interval() -> None:
    import pandas as pd

    mean, half, n = summarise(pd.Series([1.0, 3.0]))
    assert (mean, n) == (2.0, 2) and half == pytest.approx(12.706204736174698 * 1.0 / 1.0)  # t(0.975, 1) * sd/sqrt(2)
    assert summarise(pd.Series([4.0])) == (4.0, None, 1)


@pytest.mark.slow
@pytest.mark.parametrize("fmt", FORMATS)
def test_ablation_table_matches_golden(store: str, fmt: str) -> None:
    text = build_ablation(store, "tables", "agm", fmt, profile="default", dataset="synth")
    golden = GOLDEN / f"ablation-agm.{fmt}"
    if os.environ.get("KBENCH_UPDATE_GOLDEN"):
        golden.write_text(text)
    assert text == golden.read_text()


@pytest.mark.slow
def test_ablation_cells_against_their_definition(store: str) -> None:
    runs = load_runs(store, "tables")
    runs = runs[runs["profile"] == "default"]
    cells = ablation_cells(runs, "agm", "kaleido", Samples(store))
    headers = "ITR R@1, ITR R@5, ITR R@10, TIR R@1, TIR R@5, TIR R@10, SumR, CR ACC, CR macro-F, SUB ACC"
    headers += ", SUB macro-F, SumCLS, BLEU-4, METEOR, ROUGE-L, CIDEr, SumCAP"
    assert list(cells) == headers.split(", ")
    random, guided = cells["SumR"]["Random"], cells["SumR"]["AGM"]
    of = {v: runs[runs["variant"] == v]["sums/SumR"] for v in ("agm:random", "agm:agm")}
    assert random.ours[0] == pytest.approx(of["agm:random"].mean()) and guided.ours[0] == pytest.approx(
        of["agm:agm"].mean()
    )
    assert guided.relative == pytest.approx(100 * (guided.ours[0] - random.ours[0]) / random.ours[0])
    assert random.relative is None and random.p is None
    assert guided.significant and guided.p == pytest.approx(1 / 1001)  # no swap of items comes near the difference
    assert guided.paper == 319.52 and guided.paper_relative == pytest.approx(100 * (319.52 - 299.5) / 299.5)
    kpg = ablation_cells(runs, "kpg", "kaleido", Samples(store))["SumR"]
    assert kpg["Kaleido."].p == 1.0 and not kpg["Kaleido."].significant  # identical results to its baseline
    assert kpg["Kaleido."].ours[1] is not None  # one seed: a bootstrap interval
    with pytest.raises(KbenchError, match="no finished akpm ablation runs"):
        build_ablation(store, "tables", "akpm", "md", profile="default", dataset="synth")
    with pytest.raises(KbenchError, match="unknown ablation block 'agn'; did you mean agm"):
        build_ablation(store, "tables", "agn", "md")


@pytest.mark.slow
def test_table_cli_options(store: str, capsys: pytest.CaptureFixture) -> None:
    common = ["table", "--main", "--format", "csv", "--tracking-uri", store, "--experiment", "tables"]
    assert main([*common, "--match", "--set", OLD_LR]) == 0
    assert rows_of(capsys.readouterr().out)["Kaleido-BERT (kbench)"][2] == "2"
    assert main([*common, "--set", OLD_LR]) == 2
    assert capsys.readouterr().err == "kbench: error: --set and --config choose the runs of --match; add --match\n"
    assert main([*common, "--config-hash", "zzz"]) == 2
    assert capsys.readouterr().err.startswith("kbench: error: no finished runs with config key zzz*")


def test_every_variant_has_its_paper_column_and_option() -> None:
    paper = published()["table4_ablations"]
    columns = [v.paper for block in BLOCKS.values() for v in block]
    assert columns == list(paper)  # every published column, in the paper's order, exactly once
    assert [v.tag for v in BLOCKS["agm"]] == ["agm:random", "agm:agm"]
    assert BLOCKS["akpm"][3].overrides("kaleido") == ("models.kaleido.akpm=B+I~III",)
    assert BLOCKS["kpg"][0].overrides("kaleido") == ("models.kaleido.kpg=scale-fixed",)


def compare_csv(store: str, a: str, b: str) -> pd.DataFrame:
    return pd.read_csv(io.StringIO(compare_runs(store, "tables", a, b, "csv", profile="default", dataset="synth")))


@pytest.mark.slow
def test_compare_identical_runs_differ_by_zero_with_p_one(store: str) -> None:
    runs = load_runs(store, "tables")
    scale_fixed, kaleido = (runs[runs["variant"] == v].iloc[0]["run_id"] for v in ("kpg:scale-fixed", "kpg:kaleido"))
    table = compare_csv(store, scale_fixed, kaleido)  # two configurations whose results are identical
    assert len(table) == 17 and (table["difference"] == 0).all() and (table["p"] == 1).all()
    assert (table["low"] == 0).all() and (table["high"] == 0).all() and not table["significant"].any()


@pytest.mark.slow
def test_compare_states_which_differences_are_significant(store: str) -> None:
    runs = load_runs(store, "tables")
    guided, random = (runs[runs["variant"] == v].sort_values("seed") for v in ("agm:agm", "agm:random"))
    table = compare_csv(store, "kaleido:agm:agm", "kaleido:agm:random").set_index("metric")
    for metric in ("ITR R@1", "SumR", "SUB macro-F", "BLEU-4", "SumCAP"):
        key = next(c.metric for c in ABLATION_METRICS if c.header == metric)
        difference = guided[key].mean() - random[key].mean()  # the mean over the seed pairs of the logged values
        row = table.loc[metric]
        assert (
            row["difference"] == pytest.approx(difference, rel=1e-5) and row["low"] <= row["difference"] <= row["high"]
        )
    assert table.loc["SumR", "significant"] and table.loc["SumR", "p"] == pytest.approx(1 / 1001)
    text = compare_runs(store, "tables", "kaleido:agm:agm", "kaleido:agm:random", profile="default", dataset="synth")
    assert text.startswith("A: kaleido:agm:agm, seeds 0, 1 (runs ") and "2 pair(s) over the same test items" in text
    assert "| SumR " in text and "| yes " in text


@pytest.mark.slow
def test_compare_two_seeds_of_one_model(store: str) -> None:
    runs = load_runs(store, "tables")
    seeds = runs[(runs["model"] == "fashionbert") & (runs["profile"] == "default") & runs["limit"].isna()]
    seeds = seeds.sort_values("seed")
    table = compare_csv(store, seeds.iloc[0]["run_id"], seeds.iloc[1]["run_id"]).set_index("metric")
    assert table.loc["CIDEr", "difference"] == pytest.approx(
        seeds["fc/CIDEr"].iloc[0] - seeds["fc/CIDEr"].iloc[1], rel=1e-5
    )
    contains_zero = (table["low"] <= 0) & (table["high"] >= 0)
    assert contains_zero.sum() == 15 and table["significant"].sum() == 1  # seeds 0.4 vs 0.45: SumCAP tells


@pytest.mark.slow
def test_compare_bad_input_is_one_line(store: str, capsys: pytest.CaptureFixture) -> None:
    common = ["--tracking-uri", store, "--experiment", "tables", "--profile", "default"]
    assert main(["compare", "nosuchmodel", "clip", *common]) == 2
    err = capsys.readouterr().err
    assert err == "kbench: error: 'nosuchmodel' is neither a run id nor a model[:variant] with finished runs\n"
    assert main(["compare", "vilbert", "clip", *common]) == 2  # vilbert's run predates per-sample records
    assert "have no per-sample records" in capsys.readouterr().err
    two = pd.DataFrame({"seed": ["0", "1"]})
    with pytest.raises(KbenchError, match="no seed in common to pair: A has 0, 1, B has 2, 3"):
        pairs(two, pd.DataFrame({"seed": ["2", "3"]}))

"""SynthFashion: layout, determinism, ground truth, class balance and caching of the generated dataset."""

from __future__ import annotations

import dataclasses
import itertools
import json
from collections import Counter
from pathlib import Path

import h5py
import numpy as np
import pytest

from kbench.core.config import DataConfig, SynthConfig
from kbench.core.errors import KbenchError
from kbench.core.integrity import MANIFEST
from kbench.data import synth
from kbench.data import synth_render as render_module
from kbench.data.fashiongen import read_splits
from kbench.data.layout import (
    IMAGE_KEY,
    IMAGE_SIZE,
    PRODUCT_KEY,
    TEST_FILE,
    TEXT_KEYS,
    TRAIN_FILE,
    check_layout,
    decode,
)
from kbench.data.synth_render import BACK, FRONT, PALETTE, SILHOUETTES, Look, View, feature_box, render
from kbench.data.synth_text import FEATURE_TEMPLATES, word_pieces, words

TINY = SynthConfig(products_train=60, products_test=25, max_poses=3, seed=0)
GLOBAL = ("garment", "colour", "pattern")
SUBS = {s.name: s for s in synth.CATALOGUE}


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("synth")
    synth.generate(out, TINY)
    return out


def _columns(path: Path) -> dict[str, list]:
    """Every per-row column of a file except the images, text decoded, regions parsed."""
    with h5py.File(path, "r") as f:
        cols: dict[str, list] = {key: decode(f[key][:]) for key in TEXT_KEYS}
        cols["id"] = f[PRODUCT_KEY][:, 0].tolist()
        cols["box"] = f["synth_garment_box"][:].tolist()
        cols["regions"] = [json.loads(r) for r in decode(f["synth_attribute_regions"][:])]
    return cols


def _products(cols: dict[str, list]) -> list[list[int]]:
    """Row indices of each product, in file order."""
    runs = itertools.groupby(range(len(cols["id"])), key=lambda i: cols["id"][i])
    return [list(rows) for _, rows in runs]


def _both(tiny: Path) -> list[dict[str, list]]:
    return [_columns(tiny / TRAIN_FILE), _columns(tiny / TEST_FILE)]


@pytest.mark.slow
def test_same_config_gives_identical_bytes_another_seed_does_not(tiny: Path, tmp_path: Path) -> None:
    synth.generate(tmp_path / "again", TINY)
    synth.generate(tmp_path / "seed1", SynthConfig(**{**TINY.__dict__, "seed": 1}))
    for name in (TRAIN_FILE, TEST_FILE):
        assert (tmp_path / "again" / name).read_bytes() == (tiny / name).read_bytes()
        assert (tmp_path / "seed1" / name).read_bytes() != (tiny / name).read_bytes()


def test_layout_check_and_reader_accept_the_files(tiny: Path) -> None:
    with h5py.File(tiny / TRAIN_FILE, "r") as f:
        n_train = check_layout(f, tiny / TRAIN_FILE)
    with h5py.File(tiny / TEST_FILE, "r") as f:
        n_test = check_layout(f, tiny / TEST_FILE)
    splits = read_splits(tiny, DataConfig(data_dir=str(tiny), dev_fraction=0.1), "synth")
    assert len(splits.train) + len(splits.dev) == n_train
    assert len(splits.test) == n_test
    assert len(splits.dev.product_groups()) == round(TINY.products_train * 0.1)
    assert len(splits.categories) == len({s.category for s in synth.CATALOGUE})
    assert splits.train.read_images(np.array([0, 1])).shape == (2, IMAGE_SIZE, IMAGE_SIZE, 3)


def test_keys_dtypes_and_shapes_follow_the_layout(tiny: Path) -> None:
    for name in (TRAIN_FILE, TEST_FILE):
        with h5py.File(tiny / name, "r") as f:
            n = f[IMAGE_KEY].shape[0]
            assert f[IMAGE_KEY].shape == (n, IMAGE_SIZE, IMAGE_SIZE, 3) and f[IMAGE_KEY].dtype == np.uint8
            assert f[PRODUCT_KEY].shape == (n, 1) and f[PRODUCT_KEY].dtype.kind == "i"
            for key in (*TEXT_KEYS, "synth_attribute_regions"):
                assert f[key].shape == (n, 1) and f[key].dtype.kind == "S", key
                assert all(decode(f[key][:])), f"{key} has empty values"
            assert f["synth_garment_box"].shape == (n, 4) and f["synth_garment_box"].dtype == np.int16


def test_products_are_contiguous_share_their_text_and_have_poses(tiny: Path) -> None:
    train, test = _both(tiny)
    assert not set(train["id"]) & set(test["id"])
    for cols in (train, test):
        products = _products(cols)
        assert len(products) == len(set(cols["id"])), "a product's rows are not contiguous"
        for rows in products:
            for key in TEXT_KEYS:
                if key != "input_pose":
                    assert len({cols[key][i] for i in rows}) == 1, key
            assert [cols["input_pose"][i] for i in rows] == [f"id_gridfs_{k + 1}" for k in range(len(rows))]
        sizes = Counter(len(rows) for rows in products)
        assert set(sizes) == {1, 2, 3}


def test_back_views_hide_front_details_and_keep_global_attributes(tiny: Path) -> None:
    hidden = 0
    for cols in _both(tiny):
        for rows in _products(cols):
            front = [e["attribute"] for e in cols["regions"][rows[0]]]
            for i in rows:
                attributes = [e["attribute"] for e in cols["regions"][i]]
                assert [a for a in attributes if a in GLOBAL] == [a for a in front if a in GLOBAL]
            if len(rows) > 1:
                back = Counter(e["attribute"] for e in cols["regions"][rows[1]])
                hidden += sum((Counter(front) - back).values())
    assert hidden > 0


def test_descriptions_name_colour_garment_and_every_region(tiny: Path) -> None:
    for cols in _both(tiny):
        for i, description in enumerate(cols["input_description"]):
            said = words(description)
            entries = {e["attribute"]: e["words"] for e in cols["regions"][i]}
            colour = entries["colour"][0]
            assert colour in PALETTE and colour in said
            assert SUBS[cols["input_subcategory"][i]].noun in description.lower()
            assert cols["input_name"][i].startswith(colour.title())
            for e in cols["regions"][i]:
                assert e["words"] and set(e["words"]) <= set(said), (e, description)


def test_region_boxes_lie_in_the_image_and_the_garment_box(tiny: Path) -> None:
    for cols in _both(tiny):
        for box, regions in zip(cols["box"], cols["regions"], strict=True):
            x1, y1, x2, y2 = box
            assert 0 <= x1 < x2 <= IMAGE_SIZE and 0 <= y1 < y2 <= IMAGE_SIZE
            assert (x2 - x1) * (y2 - y1) > IMAGE_SIZE**2 // 10
            for e in regions:
                a1, b1, a2, b2 = e["box"]
                assert x1 <= a1 < a2 <= x2 and y1 <= b1 < b2 <= y2, e
                if e["attribute"] in GLOBAL:
                    assert e["box"] == box


def test_images_show_the_garment_in_its_colour(tiny: Path) -> None:
    cols = _columns(tiny / TRAIN_FILE)
    with h5py.File(tiny / TRAIN_FILE, "r") as f:
        images = f[IMAGE_KEY][:].astype(np.int16)
    solid = [i for i, regions in enumerate(cols["regions"]) if "pattern" not in {e["attribute"] for e in regions}]
    assert len(solid) > 20
    for i in solid:
        x1, y1, x2, y2 = cols["box"][i]
        colour = np.array(PALETTE[cols["regions"][i][1]["words"][0]])
        inside = images[i, y1:y2, x1:x2].reshape(-1, 3)
        near = np.abs(inside - colour).max(axis=1) <= 2 * 4 + 1  # mottle noise, and tint on the way
        assert near.mean() > 0.25, cols["input_description"][i]
        top_left = np.concatenate([images[i, :4].reshape(-1, 3), images[i, :, :4].reshape(-1, 3)])  # no shadow
        assert top_left.min() > 200, "the backdrop is light"


@pytest.mark.slow
def test_class_sizes_are_imbalanced_and_the_hierarchy_consistent(tiny: Path) -> None:
    default = SynthConfig()
    for split, n in (("train", default.products_train), ("test", default.products_test)):
        counts = Counter(p.sub.name for p in synth.plan_split(default, split))
        assert sum(counts.values()) == n
        (first, a), (second, b) = counts.most_common(2)
        assert a / n >= 0.12 and b / n >= 0.12, (first, second)
        assert a >= 8 * min(counts.values()), "Zipf-like: the largest class dwarfs the smallest"
    assert len({s.category for s in synth.CATALOGUE}) >= 8 and len(SUBS) >= 20
    pairs = set()
    for cols in _both(tiny):
        pairs |= set(zip(cols["input_category"], cols["input_subcategory"], strict=True))
    assert all(SUBS[s].category == c for c, s in pairs)
    assert len({s for _, s in pairs}) == len(SUBS)


def test_rarest_subcategory_is_only_in_train(tiny: Path) -> None:
    train, test = _both(tiny)
    assert min(synth.CATALOGUE, key=lambda s: s.share).name == synth.TRAIN_ONLY
    assert synth.TRAIN_ONLY in train["input_subcategory"]
    assert synth.TRAIN_ONLY not in test["input_subcategory"]
    assert set(test["input_subcategory"]) == set(SUBS) - {synth.TRAIN_ONLY}


def test_subcategory_counts_keep_every_class_and_the_total() -> None:
    counts = synth.subcategory_counts(40, synth.CATALOGUE)
    assert sum(counts) == 40 and min(counts) == 1
    assert counts[0] == max(counts)
    assert sum(synth.subcategory_counts(5, synth.CATALOGUE)) == 5


def test_descriptions_fit_the_bundled_tokenizer() -> None:
    from kbench.data.text import BUNDLED, load_tokenizer

    tokenizer = load_tokenizer(BUNDLED)
    texts = [p.description.text for p in synth.plan_split(SynthConfig(products_train=800), "train")]
    pieces = [len(tokenizer.tokenize(t)) for t in texts]
    assert pieces == [word_pieces([t]) for t in texts]
    assert min(pieces) >= 15 and max(pieces) <= 35
    assert tokenizer.unk_token not in {piece for t in texts for piece in tokenizer.tokenize(t)}


@pytest.mark.parametrize("sub", synth.CATALOGUE, ids=lambda s: s.name)
def test_every_feature_is_worded_and_drawn_inside_its_box_on_its_sides(sub: synth.SubCategory) -> None:
    aspect = SILHOUETTES[sub.silhouette].aspect
    place = render_module.place(aspect, np.random.default_rng(0))
    bare = Look(sub.silhouette, "navy", "solid", None, 0.08, "circle", ())
    for feature in {f for slot in sub.slots for f in slot if f is not None}:
        assert feature.style in FEATURE_TEMPLATES[feature.attribute], feature
        look = dataclasses.replace(bare, features=(feature,))
        for side in (FRONT, BACK):
            view = View(side, place, (232, 230, 228), 0)
            changed = np.any(render(look, view) != render(bare, view), axis=2)
            box = feature_box(look, feature, view)
            if box is None:
                assert not feature.visible(side) and not changed.any(), (feature, side)
                continue
            x1, y1, x2, y2 = box
            ys, xs = np.nonzero(changed)
            inside = (xs >= x1 - 4) & (xs < x2 + 4) & (ys >= y1 - 4) & (ys < y2 + 4)
            assert len(xs) >= 20 and inside.mean() > 0.9, (feature, side, box)


def test_locate_generates_once_then_reuses(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("KBENCH_HOME", str(tmp_path))
    cfg = DataConfig(synth=SynthConfig(products_train=30, products_test=10, max_poses=2))
    first = synth.SynthFashion().locate(cfg)
    assert first.parent == tmp_path / "synth"
    files = sorted(p.name for p in first.iterdir() if not p.name.startswith("."))
    assert files == sorted([MANIFEST, TEST_FILE, TRAIN_FILE])
    stamp = (first / TRAIN_FILE).stat().st_mtime_ns

    def refuse(*args: object) -> None:
        raise AssertionError("generated twice")

    monkeypatch.setattr(synth, "_write", refuse)
    assert synth.SynthFashion().locate(cfg) == first
    assert (first / TRAIN_FILE).stat().st_mtime_ns == stamp
    assert [p.name for p in (tmp_path / "synth").iterdir() if p.is_dir()] == [first.name]
    given = tmp_path / "elsewhere"
    assert synth.SynthFashion().locate(DataConfig(data_dir=str(given))) == given


def test_generate_refuses_empty_splits(tmp_path: Path) -> None:
    with pytest.raises(KbenchError, match="at least one"):
        synth.generate(tmp_path, SynthConfig(products_test=0))

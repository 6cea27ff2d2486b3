"""The Fashion-Gen reader on small files in the official layout, and every way such a file can be wrong."""

from __future__ import annotations

import shutil
from pathlib import Path

import h5py
import numpy as np
import pytest

from kbench.core.config import DataConfig
from kbench.core.errors import KbenchError
from kbench.data import load_dataset
from kbench.data.fashiongen import read_splits
from kbench.data.layout import IMAGE_KEY, PRODUCT_KEY, TEST_FILE, TEXT_KEYS, TRAIN_FILE


def read(root: Path, **kwargs):
    return read_splits(root, DataConfig(dataset="fashiongen", data_dir=str(root), **kwargs), "fashiongen")


def test_reads_official_layout(tiny_fashiongen: Path) -> None:
    data = read(tiny_fashiongen, dev_fraction=0.2)
    with h5py.File(tiny_fashiongen / TRAIN_FILE) as f:
        n_train = len(f[IMAGE_KEY])
        ids = f[PRODUCT_KEY][:, 0]
    assert len(data.train) + len(data.dev) == n_train
    assert len(set(ids)) == 30
    # dev is carved by product: no product on both sides, 20 % of the 30 products
    assert set(data.train.meta["product_id"]).isdisjoint(data.dev.meta["product_id"])
    assert data.dev.meta["product_id"].nunique() == 6
    # ISO-8859-1 text decodes back to the original characters
    assert data.test.meta["description"].iloc[0].endswith("Appliqué at front. Tonal stitching.")
    assert data.categories == ["BAGS", "PANTS", "TOPS"]
    assert data.subcategories == ["JEANS", "SHIRTS", "T-SHIRTS", "TOTE BAGS"]
    groups = data.test.product_groups()
    assert len(groups) == 12 and all(len(p) in (1, 2, 3) for p in groups.values())


def test_images_are_read_lazily_in_requested_order(tiny_fashiongen: Path) -> None:
    data = read(tiny_fashiongen)
    positions = np.array([5, 0, 5, 3])
    images = data.test.read_images(positions)
    with h5py.File(tiny_fashiongen / TEST_FILE) as f:
        rows = data.test.meta["row"].to_numpy()[positions]
        expected = np.stack([f[IMAGE_KEY][r] for r in rows])
    assert images.shape == (4, 256, 256, 3) and images.dtype == np.uint8
    np.testing.assert_array_equal(images, expected)


def test_fingerprint_is_stable_and_sees_content(tiny_fashiongen: Path, tmp_path: Path) -> None:
    first, again = read(tiny_fashiongen), read(tiny_fashiongen)
    assert first.fingerprint == again.fingerprint
    copy = tmp_path / "copy"
    shutil.copytree(tiny_fashiongen, copy)
    with h5py.File(copy / TEST_FILE, "r+") as f:
        f["input_description"][0, 0] = b"Something else entirely."
    assert read(copy).fingerprint != first.fingerprint


def test_empty_descriptions_and_unseen_subcategories(tiny_fashiongen: Path, tmp_path: Path, caplog) -> None:
    copy = tmp_path / "copy"
    shutil.copytree(tiny_fashiongen, copy)
    with h5py.File(copy / TEST_FILE, "r+") as f:
        n = len(f[IMAGE_KEY])
        f["input_description"][0, 0] = b"   "
        f["input_subcategory"][1, 0] = b"MONKSTRAPS"
    with caplog.at_level("INFO"):
        data = read(copy)
    assert len(data.test) == n - 1
    assert "dropped 1 of" in caplog.text
    assert "unseen in training" in caplog.text
    assert "MONKSTRAPS" not in data.subcategories


def _broken(tiny: Path, tmp_path: Path, edit) -> Path:
    root = tmp_path / "broken"
    shutil.copytree(tiny, root)
    with h5py.File(root / TRAIN_FILE, "r+") as f:
        edit(f)
    return root


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (lambda f: f.__delitem__("input_description"), "missing key 'input_description'"),
        (lambda f: f.__delitem__(IMAGE_KEY), "missing key 'input_image'"),
        (
            lambda f: (f.__delitem__(IMAGE_KEY), f.create_dataset(IMAGE_KEY, data=np.zeros((4, 8, 8, 3), np.float32))),
            "expected (N, H, W, 3) uint8",
        ),
        (
            lambda f: (f.__delitem__(PRODUCT_KEY), f.create_dataset(PRODUCT_KEY, data=np.zeros(3, np.int32))),
            "input_productID has shape (3,)",
        ),
        (
            lambda f: (f.__delitem__(TEXT_KEYS[3]), f.create_dataset(TEXT_KEYS[3], data=np.zeros((2, 1)))),
            "input_category has shape (2, 1) and dtype float64",
        ),
    ],
)
def test_layout_errors_name_the_problem(tiny_fashiongen: Path, tmp_path: Path, edit, message: str) -> None:
    root = _broken(tiny_fashiongen, tmp_path, edit)
    with pytest.raises(KbenchError) as err:
        read(root)
    assert message in str(err.value) and TRAIN_FILE in str(err.value)


def test_missing_and_truncated_files(tiny_fashiongen: Path, tmp_path: Path) -> None:
    with pytest.raises(KbenchError, match="does not exist"):
        read(tmp_path / "nowhere")
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(KbenchError, match=f"missing data file .*{TRAIN_FILE}"):
        read(empty)
    cut = tmp_path / "cut"
    shutil.copytree(tiny_fashiongen, cut)
    data = (cut / TRAIN_FILE).read_bytes()
    (cut / TRAIN_FILE).write_bytes(data[: len(data) // 3])
    with pytest.raises(KbenchError, match="cannot read"):
        read(cut)


def test_fashiongen_needs_a_data_dir() -> None:
    with pytest.raises(KbenchError, match="needs --data-dir"):
        load_dataset(DataConfig(dataset="fashiongen"))
    with pytest.raises(KbenchError, match="unknown dataset 'fashiongem'; did you mean fashiongen"):
        load_dataset(DataConfig(dataset="fashiongem"))

"""Shared fixtures: an isolated kbench cache and tiny datasets in the official Fashion-Gen layout."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from kbench.data.layout import TEST_FILE, TRAIN_FILE, write_split


@pytest.fixture(autouse=True, scope="session")
def one_thread() -> None:
    """The tests' models are tiny: intra-op threads gain them nothing and only spin against other work. (Trials
    that tests launch through Ray run in their own processes, with Ray's thread settings.)"""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(autouse=True, scope="session")
def kbench_home(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Every test writes caches under one temporary KBENCH_HOME, never the user's cache."""
    home = tmp_path_factory.mktemp("kbench-home")
    mp = pytest.MonkeyPatch()
    mp.setenv("KBENCH_HOME", str(home))
    yield home
    mp.undo()


def write_tiny_split(path: Path, products: int, seed: int, first_id: int = 1000) -> None:
    """A small split in the official layout: 1-3 poses per product, random images, Fashion-Gen-like text."""
    rng = np.random.default_rng(seed)
    poses = rng.integers(1, 4, size=products)
    ids = np.repeat(np.arange(first_id, first_id + products), poses)
    categories = {"TOPS": ["SHIRTS", "T-SHIRTS"], "PANTS": ["JEANS"], "BAGS": ["TOTE BAGS"]}
    pairs = [(c, s) for c, subs in categories.items() for s in subs]
    product_pair = [pairs[i % len(pairs)] for i in range(products)]
    colours = ["black", "navy", "red", "white"]
    text = {
        "input_description": [],
        "input_category": [],
        "input_subcategory": [],
        "input_pose": [],
        "input_name": [],
    }
    for p, n in enumerate(poses):
        cat, sub = product_pair[p]
        desc = f"Cotton {sub.lower()} in {colours[p % len(colours)]}. Appliqué at front. Tonal stitching."
        for k in range(n):
            text["input_description"].append(desc)
            text["input_category"].append(cat)
            text["input_subcategory"].append(sub)
            text["input_pose"].append(f"id_gridfs_{k + 1}")
            text["input_name"].append(f"{colours[p % len(colours)].title()} {sub.title()}")
    images = rng.integers(0, 256, size=(len(ids), 256, 256, 3), dtype=np.uint8)
    write_split(path, [images], ids.tolist(), text)


@pytest.fixture(scope="session")
def tiny_fashiongen(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A directory holding both files of a tiny dataset in the official layout."""
    root = tmp_path_factory.mktemp("fashiongen")
    write_tiny_split(root / TRAIN_FILE, products=30, seed=1)
    write_tiny_split(root / TEST_FILE, products=12, seed=2, first_id=5000)
    return root

"""Retrieval protocols: the candidate lists are what FashionBERT's protocol says, seeded and reused."""

from __future__ import annotations

from collections import Counter

import numpy as np
import pytest

from kbench.core.config import DataConfig, SynthConfig
from kbench.core.paths import cache_dir
from kbench.data.fashiongen import read_splits
from kbench.data.synth import generate
from kbench.tasks.protocols import PROTOCOLS, CandidateLists, FashionBert101


@pytest.fixture(scope="module")
def test_split(tmp_path_factory: pytest.TempPathFactory):
    root = tmp_path_factory.mktemp("synth")
    generate(root, SynthConfig(products_train=40, products_test=800, max_poses=2, seed=3))
    return read_splits(root, DataConfig(data_dir=str(root)), "synth").test


@pytest.mark.slow
def test_fashionbert_101_lists(test_split) -> None:
    lists = FashionBert101().draw(test_split, "image", queries=60, seed=0)
    meta = test_split.meta
    product_of_row = dict(zip(meta["row"], meta["product_id"], strict=True))
    subcat = dict(zip(meta["product_id"], meta["subcategory"], strict=True))
    sizes = Counter(subcat[p] for p in set(meta["product_id"]))
    assert len(lists.query_products) == 60 == len(set(lists.query_products))
    for q, q_row, products, rows, short in zip(
        lists.query_products,
        lists.query_rows,
        lists.candidate_products,
        lists.candidate_rows,
        lists.topped_up,
        strict=True,
    ):
        assert len(products) == 101 and len(set(products)) == 101 and products[lists.positive] == q
        assert product_of_row[q_row] == q  # the query image shows the query product
        assert [product_of_row[r] for r in rows] == products  # each candidate text belongs to its product
        same = sum(subcat[p] == subcat[q] for p in products[1:])
        assert same == min(100, sizes[subcat[q]] - 1)
        assert short == 100 - same
    assert any(lists.topped_up) and not all(lists.topped_up)


@pytest.mark.slow
def test_text_queries_rank_one_image_per_product(test_split) -> None:
    lists = FashionBert101().draw(test_split, "text", queries=10, seed=0)
    meta = test_split.meta.set_index("row")
    for products, rows in zip(lists.candidate_products, lists.candidate_rows, strict=True):
        assert meta.loc[rows, "product_id"].tolist() == products
    itr = FashionBert101().draw(test_split, "image", queries=10, seed=0)
    assert itr.query_products == lists.query_products, "ITR and TIR draw the same query products"


@pytest.mark.slow
def test_lists_are_seeded_cached_and_reused(test_split) -> None:
    protocol = FashionBert101()
    first = protocol.lists(test_split, "image", 25, seed=4)
    cached = list(cache_dir("protocols").glob("fashionbert-101-v1-image-test-*-q25-s4.json"))
    assert len(cached) == 1
    assert CandidateLists.from_json(cached[0].read_text()) == first
    assert protocol.lists(test_split, "image", 25, seed=4) == first
    assert protocol.draw(test_split, "image", 25, seed=4) == first
    assert protocol.draw(test_split, "image", 25, seed=5).query_products != first.query_products
    # a part of the same file (as the dev split is of the train file) gets lists of its own
    part = test_split.subset(np.arange(len(test_split) // 2), "dev")
    assert part.file_fingerprint == test_split.file_fingerprint
    assert set(protocol.lists(part, "image", 25, seed=4).query_rows) <= set(part.meta["row"])
    assert len(list(cache_dir("protocols").glob("fashionbert-101-v1-image-*-q25-s4.json"))) == 2


@pytest.mark.slow
def test_full_gallery(test_split) -> None:
    lists = PROTOCOLS.get("full")().draw(test_split, "image", queries=5, seed=0)
    n_products = test_split.meta["product_id"].nunique()
    assert all(
        len(c) == n_products and c[0] == q for c, q in zip(lists.candidate_products, lists.query_products, strict=True)
    )
    assert np.all(np.asarray(lists.topped_up) == 0)


def test_registry_lists_both() -> None:
    assert PROTOCOLS.names() == ["fashionbert-101", "full"]

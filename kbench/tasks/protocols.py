"""Retrieval protocols: seeded candidate lists, written once and reused so every model sees identical lists.

``fashionbert-101`` (v1): queries are test products; each has its one positive plus 100 negatives from
other products of the same sub-category, topped up from other sub-categories (and recorded) when the
sub-category is too small. ``full`` (v1): every query against the whole test gallery.

Lists bear results, so a cached file is used only when it matches the checksum written after it and was drawn from
this data. A damaged one is replaced only by lists drawn again that are provably the ones recorded (drawing is
deterministic in the seed: the new lists' checksum equals the recorded one), else refused.
"""

from __future__ import annotations

import contextlib
import json
import logging
from abc import ABC, abstractmethod
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from kbench.core.config import digest
from kbench.core.errors import KbenchError
from kbench.core.integrity import bytes_digest, check_file, recorded_digest, seal_file
from kbench.core.paths import atomic_path, cache_dir, write_failed
from kbench.core.registry import Registry
from kbench.data.splits import Split

log = logging.getLogger(__name__)

IMAGE_QUERY, TEXT_QUERY = "image", "text"


@dataclass
class CandidateLists:
    """The queries and candidates of one retrieval evaluation, as file rows of the test split.

    For image queries (ITR), ``query_rows`` are images and ``candidate_rows`` texts (each row's description);
    for text queries (TIR) the other way round. The positive is always column ``positive`` of each list.
    """

    protocol: str
    version: int
    query: str
    seed: int
    data_fingerprint: str
    query_products: list[int]
    query_rows: list[int]
    candidate_products: list[list[int]]
    candidate_rows: list[list[int]]
    positive: int
    topped_up: list[int]  # negatives per query taken from other sub-categories

    def to_json(self) -> str:
        return json.dumps(asdict(self))

    @classmethod
    def from_json(cls, text: str) -> CandidateLists:
        return cls(**json.loads(text))


class RetrievalProtocol(ABC):
    """How candidate lists are drawn from the test split."""

    name: str
    version: int

    @abstractmethod
    def draw(self, test: Split, query: str, queries: int, seed: int) -> CandidateLists:
        """Draw the lists (deterministic in ``seed``)."""

    def lists(self, test: Split, query: str, queries: int, seed: int) -> CandidateLists:
        """The lists for this data, read from the cache when any earlier run drew them."""
        rows = digest(test.file_fingerprint, test.meta["row"].tolist())  # the dev split is part of the train file
        key = f"{self.name}-v{self.version}-{query}-{test.name}-{rows}-q{queries}-s{seed}.json"
        path = cache_dir("protocols") / key
        if not path.exists():
            lists = self.draw(test, query, queries, seed)
            _write(path, lists.to_json())
            return lists
        problem = check_file(path)
        if problem is None:
            try:
                lists = CandidateLists.from_json(path.read_text())
            except (ValueError, TypeError) as exc:
                problem = f"unreadable: {exc}"
            else:
                if lists.data_fingerprint == test.file_fingerprint:
                    return lists
                problem = f"drawn from data of fingerprint {lists.data_fingerprint}, not {test.file_fingerprint}"
        return self._restore(path, problem, test, query, queries, seed)

    def _restore(self, path: Path, problem: str, test: Split, query: str, queries: int, seed: int) -> CandidateLists:
        """The lists of a damaged file, drawn again, if they are provably the ones it held; else refused."""
        lists = self.draw(test, query, queries, seed)
        text = lists.to_json()
        with contextlib.suppress(OSError):
            if recorded_digest(path) == bytes_digest(text.encode()) or path.read_bytes() == text.encode():
                log.warning(
                    "candidate lists %s were damaged (%s); drawn again, identical to those recorded", path, problem
                )
                _write(path, text)
                return lists
        raise KbenchError(
            f"candidate lists {path} are damaged ({problem}) and cannot be restored; "
            "`kbench cache clear protocols` (or deleting the file) draws them anew"
        )


def _write(path: Path, text: str) -> None:
    """A list file, then its checksum; a failed write (a full disk) is one line naming the file and the space left."""
    try:
        with atomic_path(path) as tmp:
            Path(tmp).write_text(text)
        seal_file(path)
    except OSError as exc:
        path.unlink(missing_ok=True)  # a list without its checksum would be refused as damaged next time
        raise write_failed(exc, path, "candidate lists") from None


class _Products:
    """The test split by product: a seeded image per product, its text row and its sub-category."""

    def __init__(self, test: Split, rng: np.random.Generator) -> None:
        groups = test.product_groups()
        rows = test.meta["row"].to_numpy()
        subcats = test.meta["subcategory"].to_numpy()
        self.ids = np.asarray(list(groups))
        self.text_row = {pid: int(rows[pos[0]]) for pid, pos in groups.items()}
        self.image_row = {pid: int(rows[rng.choice(pos)]) for pid, pos in groups.items()}
        self.subcategory = {pid: subcats[pos[0]] for pid, pos in groups.items()}

    def rows(self, pids: list[int], side: str) -> list[int]:
        table = self.image_row if side == IMAGE_QUERY else self.text_row
        return [table[p] for p in pids]


class FashionBert101(RetrievalProtocol):
    """FashionBERT's protocol: 1 positive + 100 same-sub-category negatives per query product."""

    name = "fashionbert-101"
    version = 1
    negatives = 100

    def draw(self, test: Split, query: str, queries: int, seed: int) -> CandidateLists:
        rng = np.random.default_rng(seed)
        products = _Products(test, rng)
        by_subcat: dict[str, list[int]] = {}
        for pid in products.ids.tolist():
            by_subcat.setdefault(products.subcategory[pid], []).append(pid)
        chosen = rng.choice(products.ids, size=min(queries, len(products.ids)), replace=False).tolist()
        candidates, topped_up = [], []
        for q in chosen:
            same = [p for p in by_subcat[products.subcategory[q]] if p != q]
            take = min(self.negatives, len(same))
            negatives = rng.choice(same, size=take, replace=False).tolist() if take else []
            short = self.negatives - take
            if short:
                others = [p for p in products.ids.tolist() if products.subcategory[p] != products.subcategory[q]]
                negatives += rng.choice(others, size=min(short, len(others)), replace=False).tolist()
            candidates.append([q, *negatives])
            topped_up.append(short)
        if any(topped_up):
            log.info(
                "%s: %d of %d queries topped up from other sub-categories (%d negatives in all)",
                self.name,
                sum(1 for t in topped_up if t),
                len(chosen),
                sum(topped_up),
            )
        candidate_side = TEXT_QUERY if query == IMAGE_QUERY else IMAGE_QUERY
        return CandidateLists(
            protocol=self.name,
            version=self.version,
            query=query,
            seed=seed,
            data_fingerprint=test.file_fingerprint,
            query_products=chosen,
            query_rows=products.rows(chosen, query),
            candidate_products=candidates,
            candidate_rows=[products.rows(c, candidate_side) for c in candidates],
            positive=0,
            topped_up=topped_up,
        )


class FullGallery(RetrievalProtocol):
    """Every query product against every test product (the whole gallery)."""

    name = "full"
    version = 1

    def draw(self, test: Split, query: str, queries: int, seed: int) -> CandidateLists:
        rng = np.random.default_rng(seed)
        products = _Products(test, rng)
        chosen = rng.choice(products.ids, size=min(queries, len(products.ids)), replace=False).tolist()
        gallery = products.ids.tolist()
        candidate_side = TEXT_QUERY if query == IMAGE_QUERY else IMAGE_QUERY
        candidates = [[q, *(p for p in gallery if p != q)] for q in chosen]
        return CandidateLists(
            protocol=self.name,
            version=self.version,
            query=query,
            seed=seed,
            data_fingerprint=test.file_fingerprint,
            query_products=chosen,
            query_rows=products.rows(chosen, query),
            candidate_products=candidates,
            candidate_rows=[products.rows(c, candidate_side) for c in candidates],
            positive=0,
            topped_up=[0] * len(chosen),
        )


PROTOCOLS: Registry[type[RetrievalProtocol]] = Registry("protocol", base=RetrievalProtocol)
PROTOCOLS.register("fashionbert-101", FashionBert101)
PROTOCOLS.register("full", FullGallery)

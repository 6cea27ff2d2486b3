"""SynthFashion: a deterministic synthetic fashion dataset written in the Fashion-Gen HDF5 layout.

Products come from a Fashion-Gen-like category tree with Zipf-like sizes. Within a sub-category, products
differ only in their attributes: colour, pattern (with a second colour) and local details such as pockets,
buttons, zips or logos, each drawn at a position relative to the garment and named in the description.
Every product has 1..``max_poses`` photographs (front and back views at varying scale and position); a
back view hides the front-only details. Two keys beyond the official layout carry the ground truth:
``synth_garment_box`` (the garment's pixel box) and ``synth_attribute_regions`` (per image, a JSON list of
the described attributes it shows, with the description words naming each and its pixel box). Pixel boxes
are ``[x1, y1, x2, y2]`` with the right and bottom edges exclusive.
"""

from __future__ import annotations

import dataclasses
import io
import json
import logging
import shutil
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

import numpy as np
from filelock import FileLock

from kbench.core.config import DataConfig, SynthConfig, digest
from kbench.core.errors import KbenchError
from kbench.core.integrity import check_dir, seal_dir
from kbench.core.paths import atomic_dir, atomic_path, cache_dir, check_space, write_failed
from kbench.core.progress import stage
from kbench.data.layout import TEST_FILE, TRAIN_FILE, encode, write_split
from kbench.data.source import DataSource
from kbench.data.synth_render import (
    BACK,
    BOTH,
    FRONT,
    LOGO_SHAPES,
    PALETTE,
    SILHOUETTES,
    Box,
    Feature,
    Look,
    View,
    contrast_name,
    feature_box,
    garment_box,
    place,
    render,
    second_colours,
)
from kbench.data.synth_text import Description, describe

log = logging.getLogger(__name__)

GENERATOR_VERSION = "1"

BATCH_IMAGES = 64  # images rendered and written at a time
_ID_BASE, _ID_RANGE = 1_000_000, 9_000_000  # product ids are 7-digit numbers
_SPLIT_SEEDS = {"train": 1, "test": 2}  # derive each split's random streams from (seed, this)

T = TypeVar("T")


def _mirrored(x1: float, y1: float, x2: float, y2: float) -> tuple[Box, Box]:
    """A left-hand box and its mirror image: a pair of pockets, cuffs or creases."""
    return (x1, y1, x2, y2), (1.0 - x2, y1, 1.0 - x1, y2)


@dataclass(frozen=True)
class SubCategory:
    """One sub-category: its share of the products, silhouette, wording and the details its products vary in.

    A product takes one option of each slot, in order (``None``: nothing there); a slot of one option is a
    detail every product of the sub-category has.
    """

    category: str
    name: str
    share: float  # percent of the products
    silhouette: str
    garments: tuple[tuple[str, str], ...]  # (prefix, noun) phrases naming the garment
    noun: str  # the garment word every description contains
    materials: tuple[str, ...]
    slots: tuple[tuple[Feature | None, ...], ...]
    department: str = "CLOTHING"
    genders: tuple[str, ...] = ("MEN", "WOMEN")


_CREW = Feature("neckline", "crew")
_V_NECK = Feature("neckline", "v")
_RIB_HEM = Feature("hem", "rib", side=BOTH)

CATALOGUE: tuple[SubCategory, ...] = (
    SubCategory(
        category="TOPS",
        name="T-SHIRTS",
        share=15.0,
        silhouette="t-shirt",
        garments=(("short sleeve", "t-shirt"), ("", "t-shirt")),
        noun="t-shirt",
        materials=("cotton jersey", "organic cotton", "cotton"),
        slots=(
            (_CREW, _V_NECK),
            (
                None,
                Feature("pocket", "patch", "at chest", ((0.56, 0.2, 0.68, 0.33),)),
                Feature("logo", "printed", "at chest", ((0.57, 0.19, 0.67, 0.29),)),
                Feature("logo", "printed", "at front", ((0.41, 0.38, 0.59, 0.56),)),
                Feature("logo", "embroidered", "at chest", ((0.57, 0.19, 0.66, 0.28),)),
            ),
        ),
    ),
    SubCategory(
        category="TOPS",
        name="SHIRTS",
        share=14.0,
        silhouette="shirt",
        garments=(("long sleeve", "shirt"), ("", "shirt")),
        noun="shirt",
        materials=("cotton poplin", "linen", "cotton twill", "cotton"),
        slots=(
            (
                Feature("collar", "spread", boxes=((0.36, 0.0, 0.64, 0.13),)),
                Feature("collar", "point", boxes=((0.36, 0.0, 0.64, 0.13),)),
            ),
            (Feature("buttons", "single", "at front", ((0.465, 0.1, 0.535, 0.98),)),),
            (
                None,
                Feature("pocket", "patch", "at chest", ((0.57, 0.2, 0.69, 0.33),)),
                Feature("pocket", "flap", "at chest", _mirrored(0.3, 0.2, 0.42, 0.33)),
                Feature("logo", "embroidered", "at chest", ((0.58, 0.2, 0.67, 0.29),)),
            ),
        ),
    ),
    SubCategory(
        category="TOPS",
        name="TANK TOPS",
        share=2.0,
        silhouette="tank",
        garments=(("", "tank top"),),
        noun="tank top",
        materials=("cotton jersey", "rib knit cotton"),
        slots=(
            (
                None,
                Feature("logo", "printed", "at chest", ((0.4, 0.3, 0.6, 0.424),)),
                Feature("pocket", "patch", "at chest", ((0.56, 0.3, 0.74, 0.41),)),
            ),
        ),
    ),
    SubCategory(
        category="SWEATERS",
        name="CREWNECKS",
        share=7.0,
        silhouette="crewneck",
        garments=(("long sleeve", "sweater"), ("", "sweater")),
        noun="sweater",
        materials=("wool", "cashmere", "cotton knit"),
        slots=(
            (_CREW,),
            (
                None,
                Feature("logo", "embroidered", "at chest", ((0.57, 0.19, 0.66, 0.28),)),
                Feature("logo", "patch", "at chest", ((0.56, 0.18, 0.68, 0.3),)),
                Feature("logo", "printed", "at front", ((0.4, 0.3, 0.6, 0.5),)),
            ),
            (None, _RIB_HEM),
        ),
    ),
    SubCategory(
        category="SWEATERS",
        name="HOODIES & ZIPUPS",
        share=6.0,
        silhouette="hoodie",
        garments=(("", "hoodie"), ("long sleeve", "hoodie")),
        noun="hoodie",
        materials=("cotton fleece", "french terry", "cotton jersey"),
        slots=(
            (Feature("hood", side=BOTH),),
            (
                Feature("pocket", "kangaroo", "at front", ((0.31, 0.66, 0.69, 0.88),)),
                Feature("zip", "", "at front", ((0.47, 0.19, 0.53, 0.99),)),
            ),
            (None, Feature("drawstring", "", "at hood", ((0.41, 0.2, 0.59, 0.42),))),
            (None, _RIB_HEM),
        ),
    ),
    SubCategory(
        category="SWEATERS",
        name="CARDIGANS",
        share=1.5,
        silhouette="cardigan",
        garments=(("", "cardigan"), ("long sleeve", "cardigan")),
        noun="cardigan",
        materials=("wool", "mohair", "cotton knit"),
        slots=(
            (_V_NECK,),
            (Feature("buttons", "single", "at front", ((0.465, 0.33, 0.535, 0.98),)),),
            (None, Feature("pocket", "patch", "at front", _mirrored(0.3, 0.64, 0.43, 0.8))),
            (None, _RIB_HEM),
        ),
    ),
    SubCategory(
        category="JACKETS & COATS",
        name="BOMBERS",
        share=3.5,
        silhouette="bomber",
        garments=(("", "bomber jacket"),),
        noun="bomber jacket",
        materials=("nylon", "satin", "wool"),
        slots=(
            (Feature("zip", "", "at front", ((0.47, 0.02, 0.53, 0.99),)),),
            (None, Feature("pocket", "zip", "at sleeve", ((0.12, 0.37, 0.195, 0.45),))),
            (None, Feature("pocket", "welt", "at waist", _mirrored(0.27, 0.6, 0.38, 0.68))),
            (_RIB_HEM,),
        ),
    ),
    SubCategory(
        category="JACKETS & COATS",
        name="COATS",
        share=4.0,
        silhouette="coat",
        garments=(("", "coat"), ("long", "coat")),
        noun="coat",
        materials=("wool", "wool-blend", "cotton gabardine"),
        slots=(
            (Feature("lapels", "notched", boxes=((0.3, 0.01, 0.7, 0.32),)),),
            (
                Feature("buttons", "single", "at front", ((0.455, 0.33, 0.545, 0.72),)),
                Feature("buttons", "double-breasted", "at front", ((0.4, 0.33, 0.6, 0.62),)),
            ),
            (
                None,
                Feature("pocket", "flap", "at waist", _mirrored(0.22, 0.6, 0.38, 0.67)),
                Feature("pocket", "welt", "at waist", _mirrored(0.22, 0.6, 0.38, 0.67)),
                Feature("belt", "buckled", "at waist", ((0.17, 0.435, 0.83, 0.485),), BOTH),
            ),
        ),
    ),
    SubCategory(
        category="JACKETS & COATS",
        name="DENIM JACKETS",
        share=1.5,
        silhouette="denim-jacket",
        garments=(("", "jacket"), ("", "trucker jacket")),
        noun="jacket",
        materials=("denim", "stretch denim"),
        slots=(
            (
                Feature("collar", "spread", boxes=((0.35, 0.0, 0.65, 0.14),)),
                Feature("collar", "point", boxes=((0.35, 0.0, 0.65, 0.14),)),
            ),
            (Feature("buttons", "single", "at front", ((0.465, 0.12, 0.535, 0.98),)),),
            (None, Feature("pocket", "flap", "at chest", _mirrored(0.28, 0.22, 0.4, 0.36))),
            (None, Feature("pocket", "welt", "at waist", _mirrored(0.27, 0.62, 0.38, 0.7))),
        ),
    ),
    SubCategory(
        category="PANTS",
        name="JEANS",
        share=8.0,
        silhouette="jeans",
        garments=(("", "jeans"), ("slim-fit", "jeans"), ("straight-leg", "jeans")),
        noun="jeans",
        materials=("denim", "stretch denim"),
        slots=(
            (Feature("fly", "zip", boxes=((0.39, 0.015, 0.49, 0.27),)),),
            (None, Feature("pocket", "slant", "at front", _mirrored(0.07, 0.07, 0.25, 0.17))),
            (Feature("pocket", "patch", "at back", _mirrored(0.14, 0.12, 0.4, 0.26), BACK),),
            (None, Feature("cuffs", "rolled", "at hem", side=BOTH)),
        ),
    ),
    SubCategory(
        category="PANTS",
        name="TROUSERS",
        share=4.0,
        silhouette="trousers",
        garments=(("", "trousers"), ("wide-leg", "trousers")),
        noun="trousers",
        materials=("wool", "cotton twill", "linen"),
        slots=(
            (
                Feature("loops", "", "at waist", ((0.1, 0.0, 0.9, 0.07),), BOTH),
                Feature("belt", "buckled", "at waist", ((0.1, 0.005, 0.9, 0.065),), BOTH),
            ),
            (None, Feature("pocket", "slant", "at sides", _mirrored(0.1, 0.07, 0.24, 0.19))),
            (None, Feature("crease", "", "at front", _mirrored(0.26, 0.09, 0.28, 0.98))),
        ),
    ),
    SubCategory(
        category="PANTS",
        name="LOUNGE PANTS",
        share=1.5,
        silhouette="lounge-pants",
        garments=(("lounge", "pants"), ("track", "pants")),
        noun="pants",
        materials=("cotton fleece", "french terry"),
        slots=(
            (Feature("waistband", "elastic", side=BOTH),),
            (None, Feature("drawstring", "", "at waist", ((0.4, 0.03, 0.6, 0.24),))),
            (None, Feature("pocket", "slant", "at sides", _mirrored(0.07, 0.1, 0.22, 0.22))),
            (None, Feature("cuffs", "rib", "at hem", side=BOTH)),
        ),
    ),
    SubCategory(
        category="SHORTS",
        name="SHORTS",
        share=3.0,
        silhouette="shorts",
        garments=(("", "shorts"),),
        noun="shorts",
        materials=("cotton twill", "linen", "nylon"),
        slots=(
            (
                Feature("waistband", "elastic", side=BOTH),
                Feature("loops", "", "at waist", ((0.12, 0.0, 0.88, 0.13),), BOTH),
            ),
            (None, Feature("drawstring", "", "at waist", ((0.42, 0.05, 0.58, 0.42),))),
            (None, Feature("pocket", "slant", "at sides", _mirrored(0.12, 0.13, 0.26, 0.32))),
            (None, Feature("cuffs", "rolled", "at hem", side=BOTH)),
        ),
    ),
    SubCategory(
        category="SKIRTS",
        name="SHORT SKIRTS",
        share=3.0,
        silhouette="short-skirt",
        garments=(("short", "skirt"), ("mini", "skirt")),
        noun="skirt",
        materials=("cotton", "denim", "wool", "satin"),
        slots=(
            (None, Feature("belt", "buckled", "at waist", ((0.2, 0.0, 0.8, 0.07),), BOTH)),
            (None, Feature("buttons", "single", "at front", ((0.465, 0.08, 0.535, 0.97),))),
            (None, Feature("pocket", "patch", "at front", _mirrored(0.27, 0.18, 0.39, 0.33))),
            (
                None,
                Feature("pleats", "", "throughout", ((0.1, 0.08, 0.9, 1.0),), BOTH),
                Feature("slit", "", "at hem", ((0.44, 0.78, 0.56, 1.0),)),
            ),
        ),
        genders=("WOMEN",),
    ),
    SubCategory(
        category="SKIRTS",
        name="LONG SKIRTS",
        share=2.0,
        silhouette="long-skirt",
        garments=(("long", "skirt"), ("maxi", "skirt")),
        noun="skirt",
        materials=("cotton", "satin", "wool"),
        slots=(
            (None, Feature("belt", "buckled", "at waist", ((0.2, 0.0, 0.8, 0.07),), BOTH)),
            (None, Feature("buttons", "single", "at front", ((0.455, 0.08, 0.545, 0.97),))),
            (None, Feature("pocket", "patch", "at front", _mirrored(0.27, 0.14, 0.39, 0.22))),
            (
                None,
                Feature("pleats", "", "throughout", ((0.1, 0.08, 0.9, 1.0),), BOTH),
                Feature("slit", "", "at hem", ((0.44, 0.7, 0.56, 1.0),)),
            ),
        ),
        genders=("WOMEN",),
    ),
    SubCategory(
        category="DRESSES",
        name="SHORT DRESSES",
        share=5.0,
        silhouette="short-dress",
        garments=(("short", "dress"), ("short sleeve", "dress")),
        noun="dress",
        materials=("cotton", "crepe", "silk", "satin"),
        slots=(
            (None, Feature("buttons", "single", "at front", ((0.46, 0.07, 0.54, 0.38),))),
            (None, Feature("belt", "buckled", "at waist", ((0.27, 0.38, 0.73, 0.43),), BOTH)),
            (None, Feature("pleats", "", "at skirt", ((0.1, 0.44, 0.9, 1.0),), BOTH)),
        ),
        genders=("WOMEN",),
    ),
    SubCategory(
        category="DRESSES",
        name="LONG DRESSES",
        share=2.5,
        silhouette="long-dress",
        garments=(("long", "dress"), ("maxi", "dress")),
        noun="dress",
        materials=("silk", "crepe", "cotton", "satin"),
        slots=(
            (None, Feature("buttons", "single", "at front", ((0.45, 0.12, 0.55, 0.34),))),
            (None, Feature("belt", "buckled", "at waist", ((0.28, 0.315, 0.72, 0.365),), BOTH)),
            (None, Feature("slit", "", "at hem", ((0.4, 0.78, 0.6, 1.0),))),
        ),
        genders=("WOMEN",),
    ),
    SubCategory(
        category="BAGS",
        name="TOTE BAGS",
        share=5.0,
        silhouette="tote",
        garments=(("", "tote bag"), ("", "tote")),
        noun="tote",
        materials=("leather", "canvas", "grained leather"),
        slots=(
            (Feature("handles", "twin", side=BOTH),),
            (None, Feature("zip", "", "at top", ((0.1, 0.4, 0.9, 0.47),), BOTH)),
            (
                None,
                Feature("pocket", "patch", "at front", ((0.3, 0.55, 0.7, 0.82),)),
                Feature("logo", "printed", "at front", ((0.4, 0.55, 0.6, 0.73),)),
            ),
        ),
        department="BAGS",
    ),
    SubCategory(
        category="BAGS",
        name="SHOULDER BAGS",
        share=3.0,
        silhouette="shoulder-bag",
        garments=(("", "shoulder bag"),),
        noun="shoulder bag",
        materials=("leather", "grained leather", "suede"),
        slots=(
            (Feature("strap", "shoulder", side=BOTH),),
            (None, Feature("flap", "clasp", boxes=((0.06, 0.48, 0.94, 0.8),))),
            (None, Feature("logo", "embroidered", "at front", ((0.43, 0.82, 0.57, 0.95),))),
        ),
        department="BAGS",
    ),
    SubCategory(
        category="BAGS",
        name="BACKPACKS",
        share=2.0,
        silhouette="backpack",
        garments=(("", "backpack"),),
        noun="backpack",
        materials=("nylon", "canvas", "leather"),
        slots=(
            (Feature("handles", "single", side=BOTH),),
            (Feature("strap", "padded", side=BACK),),
            (None, Feature("pocket", "zip", "at front", ((0.2, 0.56, 0.8, 0.9),))),
            (None, Feature("logo", "patch", "at front", ((0.4, 0.3, 0.6, 0.444),))),
        ),
        department="BAGS",
    ),
    SubCategory(
        category="BAGS",
        name="POUCHES",
        share=1.0,
        silhouette="pouch",
        garments=(("", "pouch"),),
        noun="pouch",
        materials=("leather", "nylon", "canvas"),
        slots=(
            (Feature("zip", "", "at top", ((0.04, 0.16, 0.96, 0.28),), BOTH),),
            (None, Feature("strap", "wrist", side=BOTH)),
            (None, Feature("logo", "printed", "at front", ((0.42, 0.45, 0.58, 0.68),))),
        ),
        department="BAGS",
    ),
    SubCategory(
        category="HATS",
        name="BEANIES",
        share=3.0,
        silhouette="beanie",
        garments=(("", "beanie"),),
        noun="beanie",
        materials=("wool", "rib knit wool", "cashmere"),
        slots=(
            (Feature("cuff", "rib", side=BOTH),),
            (None, Feature("pompom", side=BOTH)),
            (None, Feature("logo", "patch", "at cuff", ((0.43, 0.69, 0.57, 0.91),))),
        ),
        department="ACCESSORIES",
    ),
    SubCategory(
        category="HATS",
        name="CAPS",
        share=2.5,
        silhouette="cap",
        garments=(("", "cap"), ("baseball", "cap")),
        noun="cap",
        materials=("cotton twill", "canvas", "wool"),
        slots=(
            (Feature("brim", "curved", side=BOTH),),
            (
                None,
                Feature("logo", "embroidered", "at front", ((0.44, 0.3, 0.58, 0.48),)),
                Feature("logo", "printed", "at front", ((0.44, 0.3, 0.58, 0.48),)),
            ),
        ),
        department="ACCESSORIES",
    ),
)
TRAIN_ONLY = min(CATALOGUE, key=lambda s: s.share).name  # like Fashion-Gen, the test file lacks a class

PATTERNS: dict[str, float] = {"solid": 0.44, "striped": 0.16, "checked": 0.13, "polka-dot": 0.12, "colour-block": 0.15}
PATTERN_NAMES = {
    "solid": "",
    "striped": "Striped ",
    "checked": "Check ",
    "polka-dot": "Polka Dot ",
    "colour-block": "Colour-Block ",
}

COMPOSITIONS: dict[str, str] = {
    "cotton": "100% cotton.",
    "cotton jersey": "100% cotton.",
    "organic cotton": "100% organic cotton.",
    "cotton poplin": "100% cotton.",
    "cotton twill": "100% cotton.",
    "cotton knit": "100% cotton.",
    "cotton fleece": "80% cotton, 20% polyester.",
    "cotton gabardine": "100% cotton.",
    "rib knit cotton": "95% cotton, 5% elastane.",
    "french terry": "100% cotton.",
    "linen": "100% linen.",
    "wool": "100% wool.",
    "wool-blend": "70% wool, 30% polyamide.",
    "rib knit wool": "100% wool.",
    "cashmere": "100% cashmere.",
    "mohair": "70% mohair, 30% polyamide.",
    "nylon": "100% nylon.",
    "satin": "100% polyester.",
    "crepe": "100% polyester.",
    "silk": "100% silk.",
    "denim": "100% cotton.",
    "stretch denim": "98% cotton, 2% elastane.",
    "leather": "100% leather.",
    "grained leather": "100% leather.",
    "suede": "100% leather.",
    "canvas": "100% cotton.",
}

BRANDS = (
    "Maison Verane", "Northcote", "Atelier Sorn", "Kiro Studio", "Hollis & Vane", "Oberlin Row", "Lumen Label",
    "Fenwick", "Cassel Paris", "Marlowe Works", "Studio Amsel", "Bracken & Co", "Odile Mare", "Tessaro",
    "Halden", "Juno Field",
)  # fmt: skip
SEASONS = ("SS2017", "FW2017", "SS2018", "FW2018")
# What a view takes in the files (its gzipped 256x256 image and text): 17.6 kB measured on smoke and default data.
BYTES_PER_VIEW = 18_000


@dataclass(frozen=True)
class Product:
    """One planned product: what it looks like, its text columns and its photographs."""

    pid: int
    sub: SubCategory
    look: Look
    description: Description
    text: dict[str, str]
    views: tuple[View, ...]


class SynthFashion(DataSource):
    """SynthFashion: a synthetic fashion dataset generated offline in the Fashion-Gen layout (the default)."""

    def locate(self, cfg: DataConfig) -> Path:
        """``cfg.data_dir`` as is, else the cached dataset of ``cfg.synth``, generated on first use (and again, with
        a warning, when its files fail the checksums written after them)."""
        if cfg.data_dir:
            return Path(cfg.data_dir)
        root = cache_dir("synth")
        final = root / digest(GENERATOR_VERSION, dataclasses.asdict(cfg.synth))
        with FileLock(str(root / f"{final.name}.lock")):
            problem = check_dir(final) if final.is_dir() else None
            if problem is not None:
                log.warning("cached SynthFashion %s is damaged (%s); generating it again", final, problem)
                shutil.rmtree(final)
            if not final.is_dir():
                log.info("generating SynthFashion %s into %s", _size(cfg.synth), final)
                with atomic_dir(final) as tmp:
                    _write(tmp, cfg.synth)
                    seal_dir(tmp)
        return final


def generate(out_dir: Path, cfg: SynthConfig) -> None:
    """Write both files into out_dir (created if missing), showing progress with kbench.core.progress.track/stage."""
    log.info("generating SynthFashion %s into %s", _size(cfg), out_dir)
    _write(Path(out_dir), cfg)


def _size(cfg: SynthConfig) -> str:
    return f"({cfg.products_train} train + {cfg.products_test} test products, seed {cfg.seed})"


def _write(out_dir: Path, cfg: SynthConfig) -> None:
    """Plan and write the train and test files into ``out_dir``: refused up front where the disk has less than an
    estimate of their size free, and neither left behind when writing one fails."""
    if min(cfg.products_train, cfg.products_test, cfg.max_poses) < 1:
        raise KbenchError(
            f"SynthFashion needs at least one train product, one test product and one pose per product, got {cfg}"
        )
    out_dir.mkdir(parents=True, exist_ok=True)
    plans = {split: plan_split(cfg, split) for split in ("train", "test")}
    check_space(out_dir, BYTES_PER_VIEW * sum(len(p.views) for ps in plans.values() for p in ps), "SynthFashion")
    written: list[Path] = []
    try:
        for split, filename in (("train", TRAIN_FILE), ("test", TEST_FILE)):
            _write_split(out_dir / filename, split, plans[split])
            written.append(out_dir / filename)
    except BaseException:
        for path in written:
            path.unlink(missing_ok=True)
        raise


def _write_split(path: Path, split: str, products: list[Product]) -> None:
    """Render and write one split's file.

    The HDF5 file is built in memory (about 18 kB a view) and saved with plain file I/O: once a write of HDF5's own
    fails (a full disk), its library keeps the file's unflushed metadata and crashes the interpreter at exit
    (segfault, rc 139; h5py 3.16, HDF5 2.0), whatever Python catches; a failed plain write is only an ``OSError``.
    """
    views = [(p, v) for p in products for v in p.views]
    text = {key: [p.text[key] for p, _ in views] for key in products[0].text}
    text["input_pose"] = [f"id_gridfs_{i + 1}" for p in products for i in range(len(p.views))]
    extra = {
        "synth_garment_box": np.array([garment_box(p.look, v) for p, v in views], dtype=np.int16),
        "synth_attribute_regions": encode([_regions(p, v) for p, v in views]),
    }
    image = io.BytesIO()
    with stage(f"SynthFashion {split}", len(views)) as advance:
        write_split(image, _render_batches(views, advance), [p.pid for p, _ in views], text, extra)
    try:
        with atomic_path(path) as tmp:
            tmp.write_bytes(image.getbuffer())
    except OSError as exc:
        raise write_failed(exc, path, f"SynthFashion {split}") from exc


def _product_ids(cfg: SynthConfig) -> dict[str, list[int]]:
    """Disjoint, sorted product ids of the train and test products."""
    n_train, n_test = cfg.products_train, cfg.products_test
    ids = np.random.default_rng([cfg.seed, 0]).choice(_ID_RANGE, size=n_train + n_test, replace=False) + _ID_BASE
    return {"train": sorted(ids[:n_train].tolist()), "test": sorted(ids[n_train:].tolist())}


def subcategory_counts(n: int, subcategories: Sequence[SubCategory]) -> list[int]:
    """Products per sub-category: ``n`` split in proportion to the shares, each at least one when ``n`` allows."""
    floor = 1 if n >= len(subcategories) else 0
    rest = n - floor * len(subcategories)
    total = sum(s.share for s in subcategories)
    exact = [rest * s.share / total for s in subcategories]
    counts = [floor + int(e) for e in exact]
    by_remainder = sorted(range(len(exact)), key=lambda i: (int(exact[i]) - exact[i], i))
    for i in by_remainder[: n - sum(counts)]:
        counts[i] += 1
    return counts


def plan_split(cfg: SynthConfig, split: str) -> list[Product]:
    """The products of split ``train`` or ``test`` in id order, without their images (cheap).

    Each split draws from its own seeds; the test split leaves out the train-only sub-category.
    """
    ids, code = _product_ids(cfg)[split], _SPLIT_SEEDS[split]
    subs = [s for s in CATALOGUE if split == "train" or s.name != TRAIN_ONLY]
    order = np.repeat(np.arange(len(subs)), subcategory_counts(len(ids), subs))
    np.random.default_rng([cfg.seed, code]).shuffle(order)
    rngs = (np.random.default_rng([cfg.seed, code, i]) for i in range(len(ids)))
    return [_product(pid, subs[k], cfg, rng) for pid, k, rng in zip(ids, order, rngs, strict=True)]


def _choice(options: Sequence[T], rng: np.random.Generator) -> T:
    return options[int(rng.integers(len(options)))]


def _product(pid: int, sub: SubCategory, cfg: SynthConfig, rng: np.random.Generator) -> Product:
    """Draw one product's attributes, description and views."""
    colour = _choice(list(PALETTE), rng)
    pattern = str(rng.choice(list(PATTERNS), p=list(PATTERNS.values())))
    colour2 = _choice(second_colours(colour), rng) if pattern != "solid" else None
    features = tuple(f for slot in sub.slots if (f := _choice(slot, rng)) is not None)
    brand = int(rng.integers(len(BRANDS)))
    look = Look(
        sub.silhouette, colour, pattern, colour2, float(rng.uniform(0.07, 0.1)), LOGO_SHAPES[brand % 4], features
    )
    material = _choice(sub.materials, rng)
    description = describe(
        sub.garments, material, colour, pattern, colour2, features, contrast_name(colour), sub.department, rng
    )
    name = f"{colour.title()} {PATTERN_NAMES[pattern]}{sub.noun.title()}"
    text = {
        "input_description": description.text,
        "input_concat_description": f"{name}. {description.text}",
        "input_name": name,
        "input_category": sub.category,
        "input_subcategory": sub.name,
        "input_brand": BRANDS[brand],
        "input_composition": COMPOSITIONS[material],
        "input_department": sub.department,
        "input_gender": _choice(sub.genders, rng),
        "input_season": _choice(SEASONS, rng),
    }
    return Product(pid, sub, look, description, text, _views(sub, cfg, rng))


def _views(sub: SubCategory, cfg: SynthConfig, rng: np.random.Generator) -> tuple[View, ...]:
    """1..max_poses photographs, alternating front and back, each framed and lit differently."""
    aspect = SILHOUETTES[sub.silhouette].aspect
    views = []
    for k in range(int(rng.integers(1, cfg.max_poses + 1))):
        grey = int(rng.integers(222, 243))
        tint = rng.integers(-5, 6, size=3)
        background = (grey + int(tint[0]), grey + int(tint[1]), grey + int(tint[2]))
        views.append(View(FRONT if k % 2 == 0 else BACK, place(aspect, rng), background, int(rng.integers(2**62))))
    return tuple(views)


def _regions(product: Product, view: View) -> str:
    """The JSON list of the described attributes that ``view`` shows: attribute, naming words, pixel box."""
    whole = garment_box(product.look, view)
    entries = []
    for attribute, named, feature in product.description.mentions:
        box = whole if feature is None else feature_box(product.look, feature, view)
        if box is not None:
            entries.append({"attribute": attribute, "words": list(named), "box": list(box)})
    return json.dumps(entries, separators=(",", ":"))


def _render_batches(views: Sequence[tuple[Product, View]], advance: Callable[[float], None]) -> Iterator[np.ndarray]:
    """Render the images in batches of ``BATCH_IMAGES``, reporting progress."""
    for start in range(0, len(views), BATCH_IMAGES):
        chunk = views[start : start + BATCH_IMAGES]
        yield np.stack([render(p.look, v) for p, v in chunk])
        advance(len(chunk))

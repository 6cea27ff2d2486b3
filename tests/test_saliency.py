"""Salient-object boxes: drawn garments, fallbacks, box rules, IoU scoring, plug-ins, and SynthFashion photos."""

from __future__ import annotations

from pathlib import Path

import h5py
import numpy as np
import pytest
from PIL import Image, ImageDraw

from kbench.core.config import SynthConfig
from kbench.core.errors import KbenchError
from kbench.data.layout import TEST_FILE, TRAIN_FILE
from kbench.data.synth import generate
from kbench.models.kaleido.saliency import (
    SALIENCY,
    BorderContrast,
    SaliencyDetector,
    box_iou,
    build_detector,
    score_boxes,
)

BACKDROP = (229, 231, 226)
BEIGE_BACKDROP = (226, 226, 228)


def _backdrop(
    rng: np.random.Generator, colour: tuple[int, int, int], size: tuple[int, int] = (256, 256)
) -> Image.Image:
    """A light studio backdrop of ``(width, height)`` with a top-to-bottom brightness ramp and per-pixel noise."""
    w, h = size
    ramp = np.linspace(6, -6, h)[:, None, None]
    pixels = np.asarray(colour, dtype=np.float64) + ramp + rng.normal(0, 3, (h, w, 3))
    return Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8))


def _photo(
    rng: np.random.Generator,
    shape: str,
    xy: list[tuple[int, int]],
    colour: tuple[int, int, int],
    backdrop: tuple[int, int, int] = BACKDROP,
    shadow: int = 0,
) -> tuple[np.ndarray, np.ndarray]:
    """A garment drawn as a filled ``shape`` (ellipse: two corners; polygon: vertices) and its true pixel box."""
    image = _backdrop(rng, backdrop)
    mask = Image.new("L", image.size, 0)
    draw, mask_draw = ImageDraw.Draw(image), ImageDraw.Draw(mask)
    if shadow:  # a soft studio shadow: the backdrop darkened by 12 %, offset down and right
        moved = [(x + shadow, y + shadow) for x, y in xy]
        getattr(draw, shape)(moved, fill=tuple(int(c * 0.88) for c in backdrop))
    getattr(draw, shape)(xy, fill=colour)
    getattr(mask_draw, shape)(xy, fill=255)
    ys, xs = np.nonzero(np.asarray(mask))
    return np.asarray(image), np.array([xs.min(), ys.min(), xs.max() + 1, ys.max() + 1])


SHIRT = [(70, 40), (190, 40), (230, 100), (200, 115), (185, 95), (185, 230), (75, 230), (75, 95), (55, 115), (30, 100)]
GARMENTS = {
    "navy ellipse": ("ellipse", [(60, 30), (200, 220)], (31, 43, 88), BACKDROP),
    "red shirt": ("polygon", SHIRT, (190, 34, 44), BACKDROP),
    "black trousers": (
        "polygon",
        [(20, 90), (120, 90), (130, 250), (90, 250), (70, 150), (50, 250), (10, 250)],
        (30, 30, 33),
        BACKDROP,
    ),
    "beige shirt on light grey": ("polygon", SHIRT, (214, 192, 152), BEIGE_BACKDROP),
    "pale beige dress on light grey": (
        "polygon",
        [(110, 20), (150, 20), (200, 240), (60, 240)],
        (226, 212, 188),
        BEIGE_BACKDROP,
    ),
}


@pytest.mark.parametrize("name", GARMENTS)
def test_drawn_garment_is_boxed(name: str) -> None:
    shape, xy, colour, backdrop = GARMENTS[name]
    image, truth = _photo(np.random.default_rng(0), shape, xy, colour, backdrop)
    box = BorderContrast().boxes(image[None])[0]
    assert box_iou(box, truth) >= 0.9, (box, truth)
    # the margin keeps the whole garment inside (to within a pixel of the 2 x 2 working resolution)
    assert (box[:2] <= truth[:2] + 1).all() and (box[2:] >= truth[2:] - 1).all(), (box, truth)


def test_a_studio_shadow_does_not_widen_the_box() -> None:
    image, truth = _photo(np.random.default_rng(1), "polygon", SHIRT, (40, 116, 64), shadow=6)
    with_shadow = BorderContrast(margin=0).boxes(image[None])[0]
    assert box_iou(with_shadow, truth) >= 0.97, (with_shadow, truth)
    assert (with_shadow[2:] <= truth[2:] + 1).all()


def test_a_garment_cut_by_the_image_edge_reaches_it() -> None:
    image, truth = _photo(
        np.random.default_rng(2), "polygon", [(60, 120), (200, 120), (220, 256), (40, 256)], (55, 104, 178)
    )
    box = BorderContrast().boxes(image[None])[0]
    assert box[3] == 256 and box_iou(box, truth) >= 0.9, (box, truth)


def test_a_blank_or_speck_only_photo_falls_back_to_the_whole_image() -> None:
    rng = np.random.default_rng(3)
    blank = np.asarray(_backdrop(rng, BACKDROP, (200, 160)))
    speck = blank.copy()
    speck[50:53, 70:73] = 20  # a dark speck of dust: far too small to be the garment
    np.testing.assert_array_equal(BorderContrast().boxes(np.stack([blank, speck])), [[0, 0, 200, 160]] * 2)


def test_boxes_are_integer_inside_the_image_and_at_least_5_pixels_a_side() -> None:
    rng = np.random.default_rng(4)
    images = np.stack([np.asarray(_backdrop(rng, BACKDROP, (77, 101))) for _ in range(5)])
    images[1, 30:32, 40:42] = 0  # a 2 x 2 dot: boxed with at least 5 x 5 pixels around it
    images[2, 0:2, 75:77] = 0  # the same in the top right corner: the box is shifted inside
    images[3, 20:80, 10:60] = (120, 20, 30)
    images[4] = 0  # black through and through: nothing contrasts with its border
    boxes = BorderContrast(min_fraction=0.0, margin=0.0).boxes(images)
    assert boxes.shape == (5, 4) and boxes.dtype == np.int64
    assert (boxes[:, :2] >= 0).all() and (boxes[:, 2] <= 77).all() and (boxes[:, 3] <= 101).all()
    assert (boxes[:, 2:] - boxes[:, :2] >= 5).all()
    np.testing.assert_array_equal(boxes[0], [0, 0, 77, 101])
    assert boxes[1, 0] <= 40 and boxes[1, 2] >= 42 and boxes[1, 1] <= 30 and boxes[1, 3] >= 32
    np.testing.assert_array_equal(boxes[2], [72, 0, 77, 5])
    np.testing.assert_array_equal(boxes[3], [10, 20, 60, 80])
    np.testing.assert_array_equal(boxes[4], [0, 0, 77, 101])
    assert BorderContrast().boxes(np.zeros((0, 32, 32, 3), np.uint8)).shape == (0, 4)
    with pytest.raises(KbenchError, match="images"):
        BorderContrast().boxes(np.zeros((2, 32, 32), np.uint8))


def test_box_iou_against_hand_computed_values() -> None:
    a = np.array([[0, 0, 10, 10]] * 5)
    b = np.array([[0, 0, 10, 10], [20, 20, 30, 30], [2, 2, 7, 7], [5, 0, 15, 10], [10, 0, 20, 10]])
    np.testing.assert_allclose(box_iou(a, b), [1.0, 0.0, 25 / 100, 50 / 150, 0.0])  # the last two only touch
    assert box_iou(a.reshape(5, 1, 4), b.reshape(1, 5, 4)).shape == (5, 5)


def test_score_boxes_on_a_hand_made_example() -> None:
    truth = np.array([[0, 0, 10, 10], [0, 0, 10, 10], [50, 50, 100, 100], [0, 0, 10, 10]])
    predicted = np.array([[0, 0, 10, 10], [0, 0, 10, 6], [0, 0, 100, 100], [5, 0, 15, 10]])
    expected = {"iou": (1 + 0.6 + 0.25 + 1 / 3) / 4, "iou50": 0.5, "iou75": 0.25, "fallback": 0.25}
    assert score_boxes(predicted, truth) == pytest.approx(expected)
    assert score_boxes(predicted, truth, size=(128, 128))["fallback"] == 0.0


class WholeImage(SaliencyDetector):
    """A plug-in that boxes the whole image."""

    def boxes(self, images: np.ndarray) -> np.ndarray:
        b, h, w, _ = images.shape
        return np.tile(np.array([0, 0, w, h], dtype=np.int64), (b, 1))


def test_build_detector_by_name_or_plug_in_path() -> None:
    assert "border-contrast" in SALIENCY
    assert type(build_detector("border-contrast")) is BorderContrast
    assert type(build_detector("kbench.models.kaleido.saliency:BorderContrast")) is BorderContrast
    plug_in = build_detector(f"{__name__}:WholeImage")
    np.testing.assert_array_equal(plug_in.boxes(np.zeros((1, 8, 6, 3), np.uint8)), [[0, 0, 6, 8]])
    with pytest.raises(KbenchError, match="border-contrast"):
        build_detector("border-contrats")
    with pytest.raises(KbenchError, match="not a subclass"):
        build_detector("kbench.core.errors:KbenchError")
    with pytest.raises(KbenchError, match="not a subclass"):
        build_detector("kbench.models.kaleido.saliency:box_iou")
    with pytest.raises(KbenchError, match="cannot load"):
        build_detector("kbench.no_such_module:Detector")
    with pytest.raises(KbenchError, match="cannot load"):
        build_detector("kbench.models.kaleido.saliency:NoSuchDetector")


@pytest.fixture(scope="module")
def synth_photos(tmp_path_factory: pytest.TempPathFactory) -> tuple[np.ndarray, np.ndarray]:
    """The images and true garment boxes of a tiny SynthFashion dataset, both splits."""
    out = tmp_path_factory.mktemp("synth")
    generate(out, SynthConfig(products_train=20, products_test=5, max_poses=1))
    images, boxes = [], []
    for name in (TRAIN_FILE, TEST_FILE):
        with h5py.File(Path(out) / name, "r") as f:
            images.append(f["input_image"][:])
            boxes.append(f["synth_garment_box"][:])
    return np.concatenate(images), np.concatenate(boxes).astype(np.int64)


def test_boxes_lock_the_garments_of_synthfashion(synth_photos: tuple[np.ndarray, np.ndarray]) -> None:
    images, truth = synth_photos
    scores = score_boxes(build_detector("border-contrast").boxes(images), truth, size=(256, 256))
    # The default 2 % margin alone caps the IoU of a perfect box at 1 / 1.04^2 = 0.92.
    assert scores["iou"] >= 0.85 and scores["iou75"] == 1.0 and scores["fallback"] == 0.0, scores
    tight = score_boxes(BorderContrast(margin=0.0).boxes(images), truth)
    assert tight["iou"] >= 0.95, tight

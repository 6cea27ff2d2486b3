"""Drawing of SynthFashion images: a garment built from shapes in its own unit square, on a light studio backdrop.

Every coordinate of a silhouette or a detail is relative to the garment's unit square (0..1 on both axes), so
one garment can be drawn at any scale and position. ``render`` is a pure function of its arguments (the
noise is seeded by the view), which keeps generation deterministic however images are batched.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageDraw

from kbench.data.layout import IMAGE_SIZE

Rgb = tuple[int, int, int]
Box = tuple[float, float, float, float]
PixelBox = tuple[int, int, int, int]

FRONT, BACK, BOTH = "front", "back", "both"

PALETTE: dict[str, Rgb] = {
    "black": (30, 30, 33),
    "white": (248, 247, 243),
    "navy": (31, 43, 88),
    "blue": (55, 104, 178),
    "red": (190, 34, 44),
    "green": (40, 116, 64),
    "beige": (214, 192, 152),
    "grey": (128, 129, 134),
    "pink": (238, 156, 184),
    "yellow": (238, 200, 48),
    "brown": (112, 70, 40),
    "burgundy": (116, 24, 50),
    "khaki": (160, 150, 96),
}
METAL: Rgb = (196, 196, 202)
_PULL: Rgb = (60, 60, 64)  # the outline of a zip's pull tab
MIN_CONTRAST = 120  # RGB distance between the two colours of a pattern, so that it shows
LOGO_SHAPES = ("circle", "square", "triangle", "diamond")
MARGIN = 6  # pixels kept free around the garment
NOISE, NOISE_CELL = 4, 16  # brightness noise: amplitude in grey levels, and the grid it varies on (pixels)

_XX, _YY = np.meshgrid(np.arange(IMAGE_SIZE, dtype=np.int32), np.arange(IMAGE_SIZE, dtype=np.int32))
_NOISE_CELL_OF, _NOISE_OFFSET = np.divmod(np.arange(IMAGE_SIZE, dtype=np.int32), NOISE_CELL)


@dataclass(frozen=True)
class Part:
    """One shape of a silhouette, in unit coordinates; ``tag`` parts are drawn only with that feature."""

    kind: str  # poly | ellipse | dome (upper half ellipse) | rrect | arc (upper half outline) | line
    coords: tuple[float, ...]
    role: str = "fill"  # fill (the pattern) | tone (flat shade) | band (ribbed) | inner (dark) | strap | seam
    tag: str = ""
    side: str = BOTH
    width: float = 0.0  # line and arc width, as a fraction of the garment width


@dataclass(frozen=True)
class Silhouette:
    """The shape of one sub-category: width/height ratio of its unit square and its parts, back to front."""

    aspect: float
    parts: tuple[Part, ...]


@dataclass(frozen=True)
class Feature:
    """A described detail: drawn in ``boxes`` (unit coordinates), or by the silhouette parts tagged with it."""

    attribute: str  # pocket, buttons, zip, logo, collar, hood, ...
    style: str = ""  # patch, flap, kangaroo, ... (chooses the drawing and the wording)
    where: str = ""  # "at chest" (wording only)
    boxes: tuple[Box, ...] = ()
    side: str = FRONT  # the views that show it

    def visible(self, side: str) -> bool:
        return self.side in (BOTH, side)


@dataclass(frozen=True)
class Look:
    """What one product looks like: silhouette, colours, pattern and details."""

    silhouette: str
    colour: str
    pattern: str  # solid | striped | checked | polka-dot | colour-block
    colour2: str | None
    period: float  # pattern period, a fraction of the garment width
    logo_shape: str
    features: tuple[Feature, ...]


@dataclass(frozen=True)
class View:
    """One photograph of a product: which side, where the garment's unit square lies, the backdrop, the noise."""

    side: str
    place: PixelBox  # x, y, width, height of the unit square in pixels
    background: Rgb
    seed: int


# --------------------------------------------------------------------------------------------- silhouettes


def _mirror(points: Sequence[tuple[float, float]]) -> tuple[float, ...]:
    """Flat coordinates of ``points`` mirrored about the vertical centre line."""
    return tuple(c for x, y in points for c in (1.0 - x, y))


def _flat(points: Sequence[tuple[float, float]]) -> tuple[float, ...]:
    return tuple(c for p in points for c in p)


def _lerp(a: tuple[float, float], b: tuple[float, float], t: float) -> tuple[float, float]:
    return (a[0] + (b[0] - a[0]) * t, a[1] + (b[1] - a[1]) * t)


def _pair(points: Sequence[tuple[float, float]], role: str = "fill", tag: str = "") -> tuple[Part, Part]:
    """A left part and its mirror image (sleeves, legs, cuffs)."""
    return Part("poly", _flat(points), role, tag), Part("poly", _mirror(points), role, tag)


def _top(
    sleeves: str,
    *,
    body: float = 0.25,
    hood: bool = False,
    shoulder: float = 0.06,
    armpit: float = 0.3,
    cuff: float = 0.9,
    flare: float = 0.0,
    knit: bool = False,
) -> tuple[Part, ...]:
    """A flat-lay top: sleeves, body, a crew or V neckline (or a hood), rib hem; knits get rib cuffs."""
    top = 0.17 if hood else 0.0  # room for the hood above the shoulders
    sy, ay = top + shoulder, top + armpit
    left = 0.5 - body
    parts: list[Part] = []
    if hood:
        parts.append(Part("ellipse", (0.31, 0.0, 0.69, top + 0.2), tag="hood", side=BOTH))
    shoulder_pt, armpit_pt = (left - 0.03, sy), (left, ay)
    if sleeves == "long":
        outer, inner = (0.03, cuff - 0.03), (0.16, cuff)
        parts += _pair((shoulder_pt, armpit_pt, inner, outer))
        if knit:
            parts += _pair((_lerp(shoulder_pt, outer, 0.9), _lerp(armpit_pt, inner, 0.88), inner, outer), "band")
    elif sleeves == "short":
        parts += _pair((shoulder_pt, (left, sy + 0.2), (left - 0.11, sy + 0.3), (left - 0.21, sy + 0.2)))
    hem_l, hem_r = left + flare, 1.0 - left - flare
    outline = ((0.39, top + 0.01), shoulder_pt, armpit_pt, (hem_l, 1.0))
    parts.append(Part("poly", _flat(outline) + _mirror(outline[::-1])))
    if hood:
        parts.append(Part("ellipse", (0.39, 0.035, 0.61, top + 0.12), "inner", "hood", FRONT))
    else:
        crew = (0.39, 0.01, 0.61, 0.01, 0.57, 0.065, 0.5, 0.085, 0.43, 0.065)
        parts.append(Part("poly", crew, "inner", "neckline/crew", FRONT))
        parts.append(Part("poly", (0.39, 0.01, 0.61, 0.01, 0.5, 0.32), "inner", "neckline/v", FRONT))
    parts.append(Part("poly", (hem_l, 0.93, hem_r, 0.93, hem_r, 1.0, hem_l, 1.0), "band", "hem", BOTH))
    return tuple(parts)


def _tank() -> tuple[Part, ...]:
    """A sleeveless top with straps and a scoop neck."""
    half = ((0.5, 0.2), (0.41, 0.15), (0.36, 0.0), (0.22, 0.0), (0.2, 0.17), (0.1, 0.3), (0.08, 1.0), (0.5, 1.0))
    return (Part("poly", _flat(half) + _mirror(half[::-1])),)


def _legs(*, waist: float, crotch: float, hem_out: float, hem_in: float, band: float = 0.07) -> tuple[Part, ...]:
    """Trousers or shorts: waistband, two legs meeting at the centre, optional elastic waistband and cuffs."""
    left = 0.5 - waist
    leg = ((left, band), (0.5, band), (0.5, crotch), (hem_in, 1.0), (hem_out, 1.0))
    cuff = (_lerp(leg[4], leg[0], 0.07), _lerp(leg[3], leg[2], 0.07), leg[3], leg[4])
    return (
        *_pair(leg),
        Part("poly", (left, 0.0, 1 - left, 0.0, 1 - left, band, left, band)),
        Part("poly", (left, 0.0, 1 - left, 0.0, 1 - left, band, left, band), "band", "waistband", BOTH),
        *_pair(cuff, "band", "cuffs"),
    )


def _skirt(*, waist: float, hem: float) -> tuple[Part, ...]:
    """An A-line skirt: waistband over a flared body."""
    lw, lh = 0.5 - waist, 0.5 - hem
    return (
        Part("poly", (lw, 0.07, 1 - lw, 0.07, 1 - lh, 1.0, lh, 1.0)),
        Part("poly", (lw, 0.0, 1 - lw, 0.0, 1 - lw, 0.07, lw, 0.07)),
    )


def _dress(*, sleeves: bool, waist: float, hem: float) -> tuple[Part, ...]:
    """A dress: bodice with straps or short sleeves, fitted waist, flared skirt."""
    parts: list[Part] = []
    if sleeves:
        parts += _pair(((0.22, 0.05), (0.25, 0.15), (0.16, 0.2), (0.08, 0.12)))
        bodice = ((0.39, 0.0), (0.22, 0.04), (0.25, 0.16), (0.27, waist), (0.5, waist))
    else:
        parts += [Part("line", (x, 0.0, x, 0.1), "strap", width=0.035) for x in (0.3, 0.7)]
        bodice = ((0.38, 0.12), (0.28, 0.09), (0.25, 0.17), (0.28, waist), (0.5, waist))
    skirt = ((0.27, waist), (0.5 - hem, 1.0), (0.5, 1.0))
    parts.append(Part("poly", _flat(skirt) + _mirror(skirt[::-1])))
    parts.append(Part("poly", _flat(bodice) + _mirror(bodice[::-1])))
    if sleeves:
        parts.append(Part("poly", (0.39, 0.0, 0.61, 0.0, 0.56, 0.05, 0.5, 0.065, 0.44, 0.05), "inner", side=FRONT))
    return tuple(parts)


SILHOUETTES: dict[str, Silhouette] = {
    "t-shirt": Silhouette(1.0, _top("short")),
    "shirt": Silhouette(1.0, _top("long", cuff=0.92)),
    "tank": Silhouette(0.62, _tank()),
    "crewneck": Silhouette(1.0, _top("long", body=0.27, knit=True)),
    "hoodie": Silhouette(0.92, _top("long", body=0.27, hood=True, shoulder=0.05, armpit=0.25, knit=True)),
    "cardigan": Silhouette(1.0, _top("long", body=0.26, knit=True)),
    "bomber": Silhouette(1.08, _top("long", body=0.29, flare=0.03, cuff=0.86, knit=True)),
    "coat": Silhouette(0.6, _top("long", body=0.32, flare=-0.05, shoulder=0.04, armpit=0.2, cuff=0.62)),
    "denim-jacket": Silhouette(1.1, _top("long", body=0.28, cuff=0.88)),
    "jeans": Silhouette(0.5, _legs(waist=0.44, crotch=0.3, hem_out=0.08, hem_in=0.46)),
    "trousers": Silhouette(0.6, _legs(waist=0.4, crotch=0.3, hem_out=0.0, hem_in=0.47)),
    "lounge-pants": Silhouette(0.55, _legs(waist=0.44, crotch=0.34, hem_out=0.14, hem_in=0.44, band=0.1)),
    "shorts": Silhouette(1.15, _legs(waist=0.38, crotch=0.55, hem_out=0.04, hem_in=0.47, band=0.13)),
    "short-skirt": Silhouette(1.1, _skirt(waist=0.3, hem=0.48)),
    "long-skirt": Silhouette(0.58, _skirt(waist=0.3, hem=0.48)),
    "short-dress": Silhouette(0.72, _dress(sleeves=True, waist=0.4, hem=0.48)),
    "long-dress": Silhouette(0.45, _dress(sleeves=False, waist=0.34, hem=0.46)),
    "tote": Silhouette(
        0.9,
        (
            Part("arc", (0.16, 0.0, 0.46, 0.8), "strap", "handles", width=0.04),
            Part("arc", (0.54, 0.0, 0.84, 0.8), "strap", "handles", width=0.04),
            Part("poly", (0.07, 0.38, 0.93, 0.38, 0.98, 1.0, 0.02, 1.0)),
        ),
    ),
    "shoulder-bag": Silhouette(
        0.95,
        (
            Part("arc", (0.14, 0.0, 0.86, 1.1), "strap", "strap", width=0.03),
            Part("rrect", (0.06, 0.48, 0.94, 1.0, 0.08)),
        ),
    ),
    "backpack": Silhouette(
        0.72,
        (
            Part("arc", (0.36, 0.0, 0.64, 0.24), "strap", "handles", width=0.04),
            Part("rrect", (0.06, 0.09, 0.94, 1.0, 0.16)),
            Part("line", (0.3, 0.14, 0.24, 0.92), "strap", "strap", BACK, 0.07),
            Part("line", (0.7, 0.14, 0.76, 0.92), "strap", "strap", BACK, 0.07),
        ),
    ),
    "pouch": Silhouette(
        1.45,
        (
            Part("arc", (0.02, 0.0, 0.24, 0.44), "strap", "strap", width=0.025),
            Part("rrect", (0.0, 0.12, 1.0, 1.0, 0.05)),
        ),
    ),
    "beanie": Silhouette(
        1.1,
        (
            Part("ellipse", (0.38, 0.0, 0.62, 0.24), "tone", "pompom"),
            Part("dome", (0.08, 0.12, 0.92, 1.3)),
            Part("poly", (0.05, 0.62, 0.95, 0.62, 0.95, 0.98, 0.05, 0.98), "band", "cuff", BOTH),
        ),
    ),
    "cap": Silhouette(
        1.3,
        (
            Part("poly", (0.5, 0.62, 1.0, 0.72, 0.98, 0.84, 0.48, 0.8), "tone", "brim", BOTH),
            Part("dome", (0.02, 0.08, 0.72, 1.32)),
            Part("line", (0.37, 0.09, 0.24, 0.7), "seam"),
            Part("line", (0.37, 0.09, 0.52, 0.7), "seam"),
            Part("ellipse", (0.34, 0.04, 0.4, 0.12), "tone"),
        ),
    ),
}


# --------------------------------------------------------------------------------------------- colours


def luminance(c: Rgb) -> float:
    return 0.299 * c[0] + 0.587 * c[1] + 0.114 * c[2]


def contrast_name(colour: str) -> str:
    """The named colour (white or black) that stands out on ``colour``: buttons, drawstrings, logos."""
    return "white" if luminance(PALETTE[colour]) < 150 else "black"


def second_colours(colour: str) -> list[str]:
    """Palette colours distinct enough from ``colour`` to carry a pattern on it."""
    r, g, b = PALETTE[colour]
    return [
        name
        for name, (r2, g2, b2) in PALETTE.items()
        if (r - r2) ** 2 + (g - g2) ** 2 + (b - b2) ** 2 >= MIN_CONTRAST**2
    ]


def _scale(c: Rgb, f: float) -> Rgb:
    return (int(c[0] * f), int(c[1] * f), int(c[2] * f))


def _toward(c: Rgb, target: int, f: float) -> Rgb:
    return (int(c[0] + (target - c[0]) * f), int(c[1] + (target - c[1]) * f), int(c[2] + (target - c[2]) * f))


def _tones(c: Rgb) -> tuple[Rgb, Rgb, Rgb]:
    """(shade, outline, inner) of a garment colour: darker tones, or lighter ones on very dark colours."""
    if luminance(c) < 60:
        return _toward(c, 255, 0.14), _toward(c, 255, 0.42), _scale(c, 0.45)
    return _scale(c, 0.82), _scale(c, 0.55), _scale(c, 0.45)


# --------------------------------------------------------------------------------------------- geometry


def place(aspect: float, rng: np.random.Generator) -> PixelBox:
    """A random scale and position of a unit square of width/height ``aspect``, wholly inside the image."""
    side = rng.uniform(0.66, 0.9) * IMAGE_SIZE
    w, h = (side, side / aspect) if aspect >= 1 else (side * aspect, side)
    w, h = int(w), int(h)
    x = int(rng.integers(MARGIN, IMAGE_SIZE - MARGIN - w + 1))
    y = int(rng.integers(MARGIN, IMAGE_SIZE - MARGIN - h + 1))
    return x, y, w, h


def _px(place: PixelBox, u: float, v: float) -> tuple[int, int]:
    x, y, w, h = place
    return int(x + u * w + 0.5), int(y + v * h + 0.5)


def _points(place: PixelBox, coords: Sequence[float]) -> list[tuple[int, int]]:
    return [_px(place, coords[i], coords[i + 1]) for i in range(0, len(coords) - 1, 2)]


def _pixel_box(place: PixelBox, box: Sequence[float]) -> PixelBox:
    (x1, y1), (x2, y2) = _px(place, box[0], box[1]), _px(place, box[2], box[3])
    return x1, y1, x2, y2


def _width(place: PixelBox, fraction: float) -> int:
    return max(2, int(place[2] * fraction + 0.5))


def _part_extent(part: Part, place: PixelBox) -> PixelBox:
    """The pixel box a part covers (right and bottom exclusive)."""
    pad = _width(place, part.width) // 2 + 1 if part.kind in ("line", "arc") else 1
    if part.kind in ("poly", "line"):
        pts = _points(place, part.coords)
        xs, ys = [p[0] for p in pts], [p[1] for p in pts]
        return min(xs) - pad + 1, min(ys) - pad + 1, max(xs) + pad, max(ys) + pad
    x1, y1, x2, y2 = _pixel_box(place, part.coords[:4])
    if part.kind in ("dome", "arc"):
        y2 = (y1 + y2) // 2 + pad
    return x1, y1, x2 + 1, y2 + 1


def _union(boxes: Sequence[PixelBox]) -> PixelBox:
    return min(b[0] for b in boxes), min(b[1] for b in boxes), max(b[2] for b in boxes), max(b[3] for b in boxes)


def _clip(box: PixelBox, within: PixelBox) -> PixelBox:
    return max(box[0], within[0]), max(box[1], within[1]), min(box[2], within[2]), min(box[3], within[3])


def _drawn_parts(look: Look, side: str) -> list[Part]:
    """The silhouette parts drawn on ``side``: untagged ones, and tagged ones whose feature is visible there."""
    visible = [f for f in look.features if not f.boxes and f.visible(side)]
    shown = {f.attribute for f in visible} | {f"{f.attribute}/{f.style}" for f in visible}
    return [p for p in SILHOUETTES[look.silhouette].parts if p.side in (BOTH, side) and (not p.tag or p.tag in shown)]


def garment_box(look: Look, view: View) -> PixelBox:
    """The pixel box ``[x1, y1, x2, y2)`` of everything drawn of the garment in ``view``."""
    extents = [_part_extent(p, view.place) for p in _drawn_parts(look, view.side)]
    extents += [_pixel_box(view.place, b) for f in look.features if f.visible(view.side) for b in f.boxes]
    return _clip(_union(extents), (0, 0, IMAGE_SIZE, IMAGE_SIZE))


def feature_box(look: Look, feature: Feature, view: View) -> PixelBox | None:
    """The pixel box of ``feature`` in ``view`` (inside the garment box), or None where that side hides it."""
    if not feature.visible(view.side):
        return None
    if feature.boxes:
        boxes = [_pixel_box(view.place, b) for b in feature.boxes]
    else:
        tags = (feature.attribute, f"{feature.attribute}/{feature.style}")
        parts = [p for p in _drawn_parts(look, view.side) if p.tag in tags]
        boxes = [_part_extent(p, view.place) for p in parts]
    return _clip(_union(boxes), garment_box(look, view))


# --------------------------------------------------------------------------------------------- drawing


def _pattern(look: Look, place: PixelBox) -> Image.Image | Rgb:
    """The garment fabric over the whole canvas: a flat colour, or an image of the pattern aligned to the garment."""
    main = PALETTE[look.colour]
    if look.pattern == "solid" or look.colour2 is None:
        return main
    second = PALETTE[look.colour2]
    x0, y0, w, h = place
    period = max(8, int(w * look.period + 0.5))
    half = period // 2
    dx, dy = _XX - x0, _YY - y0
    if look.pattern == "striped":
        level = (dy // half) % 2 * 2
    elif look.pattern == "checked":
        level = (dx // half) % 2 + (dy // half) % 2
    elif look.pattern == "polka-dot":
        ox, oy = dx % period - half, dy % period - half
        radius = period * 3 // 10
        level = (ox * ox + oy * oy <= radius * radius) * 2
    else:  # colour-block: the lower part of the garment in the second colour
        level = (dy >= int(h * 0.56)) * 2
    mid = tuple((a + b) // 2 for a, b in zip(main, second, strict=True))
    table = np.array([main, mid, second], dtype=np.uint8)
    return Image.fromarray(table[level])


class _Painter:
    """Draws the parts and details of one look in one view onto an image."""

    def __init__(self, image: Image.Image, look: Look, view: View) -> None:
        self.image, self.look, self.view = image, look, view
        self.draw = ImageDraw.Draw(image)
        self.mask = Image.new("L", image.size, 0)
        self.mask_draw = ImageDraw.Draw(self.mask)
        self.main = PALETTE[look.colour]
        self.shade, self.outline, self.inner = _tones(self.main)
        self.accent = PALETTE[contrast_name(look.colour)]
        self.fabric = _pattern(look, view.place)
        self.line = max(1, int(view.place[2] / 100 + 0.5))

    def shadow(self, parts: Sequence[Part]) -> None:
        """Darken the backdrop under the garment, offset down and right, as a soft studio shadow."""
        shift = max(2, self.view.place[3] // 45)
        x, y, w, h = self.view.place
        moved = (x + shift, y + shift, w, h)
        self._paste(_scale(self.view.background, 0.88), parts, moved)

    def _paste(self, source: Image.Image | Rgb, parts: Sequence[Part], place: PixelBox) -> None:
        """Paint ``source`` (an image of the canvas size, or a colour) through the shapes of ``parts``."""
        box = _clip(_union([_part_extent(p, place) for p in parts]), (0, 0, IMAGE_SIZE, IMAGE_SIZE))
        for part in parts:
            self._shape(self.mask_draw, part, place, fill=255, outline=None)
        region = source.crop(box) if isinstance(source, Image.Image) else source
        self.image.paste(region, box, self.mask.crop(box))
        self.mask_draw.rectangle(box, fill=0)

    def part(self, part: Part) -> None:
        """Draw one silhouette part in its role's colours."""
        place, width = self.view.place, _width(self.view.place, part.width)
        if part.role == "fill" and isinstance(self.fabric, Image.Image):
            self._paste(self.fabric, [part], place)
            self._shape(self.draw, part, place, fill=None, outline=self.outline)
        elif part.role == "fill":
            self._shape(self.draw, part, place, fill=self.fabric, outline=self.outline)
        elif part.role in ("tone", "band"):
            self._shape(self.draw, part, place, fill=self.shade, outline=self.outline)
            if part.role == "band":
                self._ribs(_points(place, part.coords))
        elif part.role == "inner":
            self._shape(self.draw, part, place, fill=self.inner, outline=self.outline)
        elif part.role == "strap":
            self._shape(self.draw, part, place, fill=self.outline, outline=None, width=width)
            self._shape(self.draw, part, place, fill=self.shade, outline=None, width=max(1, width - 2), inset=1)
        else:  # seam
            self._shape(self.draw, part, place, fill=self.outline, outline=None, width=self.line)

    def _shape(
        self,
        draw: ImageDraw.ImageDraw,
        part: Part,
        place: PixelBox,
        fill: Rgb | int | None,
        outline: Rgb | None,
        width: int = 0,
        inset: int = 0,
    ) -> None:
        """Draw the geometry of ``part`` with the given colours (lines and arcs use ``fill`` as their colour)."""
        line = self.line
        if part.kind == "poly":
            draw.polygon(_points(place, part.coords), fill=fill, outline=outline, width=line)
        elif part.kind == "line":
            draw.line(_points(place, part.coords), fill=fill, width=width or line, joint="curve")
        else:
            x1, y1, x2, y2 = _pixel_box(place, part.coords[:4])
            box = (x1 + inset, y1 + inset, x2 - inset, y2 - inset)
            if part.kind == "ellipse":
                draw.ellipse(box, fill=fill, outline=outline, width=line)
            elif part.kind == "dome":
                draw.pieslice(box, 180, 360, fill=fill, outline=outline, width=line)
            elif part.kind == "rrect":
                radius = int(part.coords[4] * place[2] + 0.5)
                draw.rounded_rectangle(box, radius, fill=fill, outline=outline, width=line)
            else:  # arc
                draw.arc(box, 180, 360, fill=fill, width=width or line)

    def _ribs(self, quad: list[tuple[int, int]]) -> None:
        """Rib-knit lines across a band given as a quad (top-left, top-right, bottom-right, bottom-left)."""
        tl, tr, br, bl = quad
        n = max(3, int(max(abs(tr[0] - tl[0]), abs(tr[1] - tl[1])) / 4))
        for i in range(1, n):
            t = i / n
            top, bottom = _lerp(tl, tr, t), _lerp(bl, br, t)
            self.draw.line((top, bottom), fill=self.outline, width=1)

    # Details: one method per boxed attribute, drawing a feature into its pixel boxes (a pair's second box is
    # the right-hand one); each stays inside its boxes, which are the ground truth of where the detail is.

    def pocket(self, boxes: list[PixelBox], style: str) -> None:
        """Pockets as tonal patches with an outline, so they show on any pattern."""
        for i, (x1, y1, x2, y2) in enumerate(boxes):
            w, h = x2 - x1, y2 - y1
            if style == "kangaroo":
                inset = w // 6
                corners = ((x1 + inset, y1), (x2 - inset, y1), (x2, y2), (x1, y2))
                self.draw.polygon(corners, self.shade, self.outline, self.line)
            elif style == "welt":
                mid, half = (y1 + y2) // 2, max(2, h // 5)
                self.draw.rectangle((x1, mid - half, x2, mid + half), self.outline)
            elif style == "slant":  # a triangle cut from the waist down to the side seam
                side, centre = (x1, x2) if i == 0 else (x2, x1)
                self.draw.polygon(((side, y1), (centre, y1), (side, y2)), self.shade, self.outline, self.line)
            else:
                self.draw.rectangle((x1, y1, x2, y2), self.shade, self.outline, self.line)
                if style == "zip":
                    self.zip([(x1 + 2, y1 + 2, x2 - 2, y1 + 2 + max(3, h // 4))], "")
                elif style == "flap":
                    fy, cx, r = y1 + max(4, h * 2 // 5), (x1 + x2) // 2, max(2, w // 9)
                    self.draw.polygon(((x1, y1), (x2, y1), (x2, fy), (cx, fy + 2), (x1, fy)), self.outline, self.inner)
                    self.draw.ellipse((cx - r, fy - r, cx + r, fy + r), self.accent)
                else:  # patch: a top stitch line
                    self.draw.line(((x1 + 2, y1 + 3), (x2 - 2, y1 + 3)), self.outline, 1)

    def buttons(self, boxes: list[PixelBox], style: str) -> None:
        """A placket with a column of contrasting buttons, or two columns for a double-breasted front."""
        for x1, y1, x2, y2 in boxes:
            w = x2 - x1
            if style == "double-breasted":
                columns, r = (x1 + w // 4, x2 - w // 4), max(3, w // 8)
            else:
                self.draw.rectangle((x1, y1, x2, y2), None, self.outline, 1)
                columns, r = ((x1 + x2) // 2,), max(3, min(w // 3, 5))
            n = max(3, (y2 - y1) // (5 * r))
            for k in range(n):
                cy = y1 + r + 1 + k * (y2 - y1 - 2 * r - 2) // (n - 1)
                for cx in columns:
                    self.draw.ellipse((cx - r, cy - r, cx + r, cy + r), self.accent, self.outline, 1)

    def zip(self, boxes: list[PixelBox], style: str) -> None:
        """A metal zip along the box's long side, with its pull tab at the top or right-hand end."""
        for x1, y1, x2, y2 in boxes:
            if y2 - y1 >= x2 - x1:
                cx, w = (x1 + x2) // 2, max(3, (x2 - x1) // 3)
                tab = max(4, w)
                self.draw.rectangle((cx - w // 2, y1, cx + w // 2, y2), METAL, self.inner, 1)
                self.draw.rectangle((cx - tab // 2 - 1, y1 + 1, cx + tab // 2 + 1, y1 + 2 * tab), METAL, _PULL, 1)
            else:
                cy, h = (y1 + y2) // 2, max(3, (y2 - y1) // 3)
                tab = max(4, h)
                self.draw.rectangle((x1, cy - h // 2, x2, cy + h // 2), METAL, self.inner, 1)
                self.draw.rectangle((x2 - 2 * tab, cy - tab // 2 - 1, x2 - 1, cy + tab // 2 + 1), METAL, _PULL, 1)

    def logo(self, boxes: list[PixelBox], style: str) -> None:
        """The brand's logo shape: printed (filled), embroidered (outlined) or on a contrasting patch."""
        for x1, y1, x2, y2 in boxes:
            colour = self.accent
            if style == "patch":
                self.draw.rectangle((x1, y1, x2, y2), self.accent, self.outline, 1)
                colour, (x1, y1, x2, y2) = self.main, (x1 + 3, y1 + 3, x2 - 3, y2 - 3)
            width = 2 if style == "embroidered" else 0
            fill = None if width else colour
            cx, cy = (x1 + x2) // 2, (y1 + y2) // 2
            if self.look.logo_shape == "circle":
                self.draw.ellipse((x1, y1, x2, y2), fill, colour, width)
            elif self.look.logo_shape == "square":
                self.draw.rectangle((x1, y1, x2, y2), fill, colour, width)
            elif self.look.logo_shape == "triangle":
                self.draw.polygon(((cx, y1), (x2, y2), (x1, y2)), fill, colour, width)
            else:
                self.draw.polygon(((cx, y1), (x2, cy), (cx, y2), (x1, cy)), fill, colour, width)

    def collar(self, boxes: list[PixelBox], style: str) -> None:
        """Two collar points meeting at the neck; a spread collar's points sit wide apart."""
        for x1, y1, x2, y2 in boxes:
            cx, w, h = (x1 + x2) // 2, x2 - x1, y2 - y1
            tip = w // 8 if style == "spread" else w // 3
            for edge, sign in ((x1, -1), (x2, 1)):
                points = ((edge, y1), (cx, y1 + h * 2 // 5), (cx + sign * (w // 2 - tip), y2))
                self.draw.polygon(points, self.main, self.outline, self.line)

    def lapels(self, boxes: list[PixelBox], style: str) -> None:
        """Two notched lapels folding from the shoulders down to the first button."""
        for x1, y1, x2, y2 in boxes:
            cx, w, h = (x1 + x2) // 2, x2 - x1, y2 - y1
            for edge, inward in ((x1, w // 6), (x2, -(w // 6))):
                points = (
                    (edge + inward, y1),
                    (cx, y2),
                    (edge, y1 + h * 2 // 5),
                    (edge + inward // 2, y1 + h // 4),
                    (edge + inward, y1 + h // 5),
                )
                self.draw.polygon(points, self.shade, self.outline, self.line)

    def drawstring(self, boxes: list[PixelBox], style: str) -> None:
        """Two contrasting cords hanging slightly apart, with metal tips."""
        for x1, y1, x2, y2 in boxes:
            w = x2 - x1
            for x, lean in ((x1 + w // 4, -w // 8), (x2 - w // 4, w // 8)):
                self.draw.line(((x, y1), (x + lean, y2 - 5)), self.accent, max(2, w // 12))
                self.draw.rectangle((x + lean - 2, y2 - 6, x + lean + 2, y2), METAL, self.inner, 1)

    def belt(self, boxes: list[PixelBox], style: str) -> None:
        """A leather strap across the waist (brown, or beige on dark garments) with a metal buckle."""
        for x1, y1, x2, y2 in boxes:
            strap = PALETTE["brown"] if luminance(self.main) > 110 else PALETTE["beige"]
            self.draw.rectangle((x1, y1 + 2, x2, y2 - 2), strap, _scale(strap, 0.6), 1)
            cx, h = (x1 + x2) // 2, y2 - y1
            self.draw.rectangle((cx - h // 2, y1, cx + h // 2, y2), None, METAL, 3)

    def loops(self, boxes: list[PixelBox], style: str) -> None:
        """Five belt loops spread over the waistband."""
        for x1, y1, x2, y2 in boxes:
            for k in range(5):
                x = x1 + k * (x2 - x1 - 4) // 4
                self.draw.rectangle((x, y1, x + 4, y2), self.shade, self.inner, 1)

    def pleats(self, boxes: list[PixelBox], style: str) -> None:
        """Pleat lines fanning out from the middle of the waist to the whole hem."""
        for x1, y1, x2, y2 in boxes:
            w, n = x2 - x1, 6
            for k in range(1, n):
                self.draw.line(((x1 + w // 4 + w * k // (2 * n), y1), (x1 + w * k // n, y2)), self.outline, 2)

    def slit(self, boxes: list[PixelBox], style: str) -> None:
        """A slit opening up from the hem, showing the backdrop."""
        for x1, y1, x2, y2 in boxes:
            cx = (x1 + x2) // 2
            self.draw.polygon(((x1, y2), (cx, y1), (x2, y2)), self.view.background, self.outline, self.line)

    def crease(self, boxes: list[PixelBox], style: str) -> None:
        """A pressed crease down the middle of each leg."""
        for x1, y1, x2, y2 in boxes:
            self.draw.line((((x1 + x2) // 2, y1), ((x1 + x2) // 2, y2)), self.outline, 2)

    def fly(self, boxes: list[PixelBox], style: str) -> None:
        """A metal waist button over the J-shaped stitching of a zip fly."""
        for x1, y1, x2, y2 in boxes:
            r = max(3, (x2 - x1) // 3)
            self.draw.ellipse((x1, y1, x1 + 2 * r, y1 + 2 * r), METAL, self.inner, 1)
            self.draw.line(((x2, y1 + 2 * r + 2), (x2, y2 - 4), (x1 + 2, y2)), self.outline, 2, joint="curve")

    def flap(self, boxes: list[PixelBox], style: str) -> None:
        """A bag's pointed foldover flap with a metal clasp at its tip."""
        for x1, y1, x2, y2 in boxes:
            cx = (x1 + x2) // 2
            outline = ((x1, y1), (x2, y1), (x2, y2 - 8), (cx, y2), (x1, y2 - 8))
            self.draw.polygon(outline, self.shade, self.outline, self.line)
            self.draw.rectangle((cx - 5, y2 - 9, cx + 5, y2 - 1), METAL, self.inner, 1)


def _background(colour: Rgb) -> np.ndarray:
    """A light backdrop of ``colour`` (channels under 250), a little brighter at the top, as uint8."""
    ramp = 6 - np.arange(IMAGE_SIZE, dtype=np.int16) * 12 // IMAGE_SIZE
    rows = np.asarray(colour, dtype=np.int16)[None, :] + ramp[:, None]
    canvas = np.empty((IMAGE_SIZE, IMAGE_SIZE, 3), dtype=np.uint8)
    canvas[:] = rows[:, None, :]
    return canvas


def _mottle(rng: np.random.Generator) -> np.ndarray:
    """Mild low-frequency brightness noise in -NOISE..NOISE, like a studio backdrop and fabric under soft light.

    Random values on a grid, bilinearly interpolated in integer arithmetic (exact on every machine); smooth
    noise keeps the images compressible, which per-pixel noise would not.
    """
    n, cell, offset = IMAGE_SIZE // NOISE_CELL + 1, _NOISE_CELL_OF, _NOISE_OFFSET
    grid = rng.integers(0, 2 * NOISE + 1, size=(n, n), dtype=np.int32)
    rows = grid[:, cell] * (NOISE_CELL - offset) + grid[:, cell + 1] * offset
    full = rows[cell] * (NOISE_CELL - offset)[:, None] + rows[cell + 1] * offset[:, None]
    scale = NOISE_CELL * NOISE_CELL
    return ((full + scale // 2) // scale - NOISE).astype(np.int16)[:, :, None]


def render(look: Look, view: View) -> np.ndarray:
    """The ``(256, 256, 3)`` uint8 image of ``look`` seen in ``view``."""
    image = Image.fromarray(_background(view.background))
    painter = _Painter(image, look, view)
    parts = _drawn_parts(look, view.side)
    painter.shadow(parts)
    for part in parts:
        painter.part(part)
    for feature in look.features:
        if feature.boxes and feature.visible(view.side):
            draw: Callable[[list[PixelBox], str], None] = getattr(painter, feature.attribute)
            draw([_pixel_box(view.place, b) for b in feature.boxes], feature.style)
    noise = _mottle(np.random.default_rng(view.seed))
    return np.clip(np.asarray(image, dtype=np.int16) + noise, 0, 255).astype(np.uint8)

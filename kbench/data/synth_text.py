"""Descriptions of SynthFashion products in Fashion-Gen's style, with the words that name each attribute.

A description is a garment sentence ("Long sleeve cotton poplin shirt in navy."), one sentence per detail,
one for the pattern and a text-only closing remark ("Tonal stitching."). In the templates, square brackets
mark the words that name the attribute; they are recorded for the alignment ground truth and then removed.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from kbench.data.synth_render import Feature

# The opening sentence names the garment ({pre} {noun}: "long sleeve" "shirt") and its colour, most also the
# material; the shortest first.
OPENINGS = (
    "{pre} {noun} in {colour}.",
    "{pre} {material} {noun} in {colour}.",
    "{pre} {noun} in {colour} {material}.",
    "{colour} {pre} {noun} in {material}.",
)

# attribute -> style -> templates, the shortest first; {where}, {s} (plural), {count} and {accent} (the logo
# colour) are filled in
FEATURE_TEMPLATES: dict[str, dict[str, tuple[str, ...]]] = {
    "pocket": {
        "patch": ("[Patch pocket{s}] {where}.", "{count} [patch pocket{s}] {where}."),
        "flap": ("[Flap pocket{s}] {where}.", "{count} [flap pocket{s}] {where}."),
        "kangaroo": ("[Kangaroo pocket] {where}.", "Large [kangaroo pocket] {where}."),
        "welt": ("[Welt pocket{s}] {where}.", "{count} [welt pocket{s}] {where}."),
        "zip": ("[Zip pocket{s}] {where}.", "Zippered [pocket{s}] {where}."),
        "slant": ("[Slant pocket{s}] {where}.", "{count} [slant pocket{s}] {where}."),
    },
    "buttons": {
        "single": ("[Button closure] {where}.", "[Buttoned placket] {where}."),
        "double-breasted": ("[Double-breasted] {where}.", "[Double-breasted button closure] {where}."),
    },
    "zip": {"": ("[Zip closure] {where}.", "[Zip fastening] {where}.")},
    "logo": {
        "printed": ("[{accent} logo] printed {where}.", "[Logo] printed in [{accent}] {where}."),
        "embroidered": ("[Embroidered logo] {where}.", "[Logo] embroidered in [{accent}] {where}."),
        "patch": ("[Logo patch] {where}.", "[Logo patch] in [{accent}] {where}."),
    },
    "collar": {"spread": ("[Spread collar].",), "point": ("[Point collar].",)},
    "lapels": {"notched": ("[Notched lapels].", "[Notched lapel] collar.")},
    "neckline": {
        "crew": ("[Crewneck] collar.", "[Rib knit crewneck] collar."),
        "v": ("[V-neck].", "[V-neck] collar."),
    },
    "hood": {"": ("Lined [hood].", "[Attached hood].")},
    "drawstring": {"": ("[Drawstring] {where}.", "[Drawstrings] {where}.")},
    "hem": {"rib": ("[Ribbed hem].", "[Rib knit hem].")},
    "cuffs": {
        "rib": ("[Ribbed cuffs] {where}.", "[Rib knit cuffs] {where}."),
        "rolled": ("[Rolled cuffs] {where}.", "[Turn-up cuffs] {where}."),
    },
    "waistband": {"elastic": ("[Elastic waistband].", "[Elasticized waistband].")},
    "loops": {"": ("[Belt loops] {where}.",)},
    "belt": {"buckled": ("[Buckled belt] {where}.", "[Belt] with buckle {where}.")},
    "pleats": {"": ("[Pleated] {where}.", "[Pleats] {where}.", "[Knife pleats] {where}.")},
    "slit": {"": ("[Slit] {where}.", "Single [slit] {where}.")},
    "crease": {"": ("[Creased] legs.", "[Pressed creases] {where}.")},
    "fly": {"zip": ("[Zip fly].", "Concealed [zip fly].")},
    "flap": {"clasp": ("[Flap] with clasp fastening.", "[Foldover flap] with clasp closure.")},
    "handles": {
        "twin": ("[Top handles].", "[Twin top handles]."),
        "single": ("[Top handle].", "[Carry handle] at top."),
    },
    "strap": {
        "shoulder": ("[Shoulder strap].", "[Adjustable shoulder strap]."),
        "padded": ("[Padded straps] at back.", "[Padded shoulder straps] at back."),
        "wrist": ("[Wrist strap].", "Detachable [wrist strap]."),
    },
    "pompom": {"": ("[Pompom] at crown.", "[Pompom] at top.")},
    "cuff": {"rib": ("[Fold-over cuff].", "[Rib knit cuff].", "[Turn-up cuff].")},
    "brim": {"curved": ("[Curved brim].", "[Curved peak] at front.")},
}

# pattern -> templates, the shortest first; {colour2} is the pattern's second colour
PATTERN_TEMPLATES: dict[str, tuple[str, ...]] = {
    "striped": (
        "[Striped] in [{colour2}].",
        "[Stripes] in [{colour2}] throughout.",
        "[Striped] pattern in [{colour2}] throughout.",
    ),
    "checked": (
        "[Checked] pattern in [{colour2}].",
        "[Check] pattern in [{colour2}] throughout.",
        "[Gingham check] in [{colour2}] throughout.",
    ),
    "polka-dot": ("[Polka dots] in [{colour2}].", "[Polka dot] pattern in [{colour2}] throughout."),
    "colour-block": ("[Colour-block] panel in [{colour2}].", "[Colour-blocked] in [{colour2}] at bottom."),
}

# Text-only remarks that real descriptions end with, in groups of which at most one is said; the image shows
# nothing of them.
CLOSERS: dict[str, tuple[tuple[str, ...], ...]] = {
    "CLOTHING": (
        ("Tonal stitching.",),
        ("Relaxed fit.", "Regular fit.", "Slim fit."),
        ("Unlined.", "Machine washable.", "Made in Portugal."),
    ),
    "BAGS": (("Tonal stitching.",), ("Silver-tone hardware.", "Gold-tone hardware."), ("Fully lined.", "Unlined.")),
    "ACCESSORIES": (("Tonal stitching.",), ("One size.",), ("Hand wash.", "Made in Italy.")),
}
BUDGET = 35  # word-pieces a description may take (the default text length is 40 with [CLS] and [SEP])
SHORT = 20  # descriptions shorter than this get a third closing remark

# Words of the templates that bert-base-uncased's WordPiece splits, and into how many extra pieces; the tests
# check this table against the bundled tokenizer.
EXTRA_PIECES: dict[str, int] = {
    "beanie": 1, "breasted": 1, "brim": 1, "buttoned": 1, "cardigan": 1, "cashmere": 1, "creased": 1, "creases": 2,
    "crepe": 2, "crewneck": 1, "detachable": 2, "drawstring": 2, "drawstrings": 3, "elasticized": 1, "fastening": 1,
    "fleece": 1, "foldover": 1, "gabardine": 2, "gingham": 2, "grained": 1, "hoodie": 1, "khaki": 2,
    "lapel": 1, "lapels": 1, "mohair": 1, "notched": 1, "placket": 2, "pleated": 1, "pleats": 1, "pompom": 2,
    "poplin": 1, "ribbed": 1, "stitching": 1, "suede": 1, "tonal": 1, "tote": 1, "trucker": 1, "twill": 2,
    "unlined": 1, "washable": 1, "welt": 1, "zippered": 1,
}  # fmt: skip

_BRACKETS = re.compile(r"\[([^\]]*)\]")
_WORD = re.compile(r"[a-z0-9]+")
_TOKEN = re.compile(r"\w+|[^\w\s]")


def words(text: str) -> list[str]:
    """The lower-case words of ``text``, as BERT's basic tokenizer splits them, punctuation left out."""
    return _WORD.findall(text.lower())


def word_pieces(sentences: Sequence[str]) -> int:
    """The bert-base-uncased WordPiece count of ``sentences``: words and punctuation marks, some words split."""
    return sum(1 + EXTRA_PIECES.get(token.lower(), 0) for s in sentences for token in _TOKEN.findall(s))


@dataclass(frozen=True)
class Description:
    """A description and, per described attribute in order, (attribute, naming words, feature or None)."""

    text: str
    mentions: tuple[tuple[str, tuple[str, ...], Feature | None], ...]


def _capitalise(sentence: str) -> str:
    return sentence[:1].upper() + sentence[1:]


def _fill(template: str, **values: str) -> tuple[str, tuple[str, ...]]:
    """Fill a bracketed template; return the sentence and the words inside its brackets."""
    filled = template.format(**values)
    named = tuple(w for part in _BRACKETS.findall(filled) for w in words(part))
    return _capitalise(" ".join(_BRACKETS.sub(r"\1", filled).split())), named


def _pick(options: Sequence[str], rng: np.random.Generator) -> str:
    return options[int(rng.integers(len(options)))]


def feature_sentence(
    feature: Feature, accent: str, rng: np.random.Generator, shortest: bool = False
) -> tuple[str, tuple[str, ...]]:
    """One sentence describing ``feature`` (the shortest template if asked) and the words naming it."""
    templates = FEATURE_TEMPLATES[feature.attribute][feature.style]
    template = templates[0] if shortest else _pick(templates, rng)
    pair = len(feature.boxes) > 1
    return _fill(
        template, where=feature.where, s="s" if pair else "", count="Two" if pair else "Single", accent=accent
    )


def _pattern_sentence(
    pattern: str, colour2: str, rng: np.random.Generator, shortest: bool = False
) -> tuple[str, tuple[str, ...]]:
    """One sentence describing a pattern in ``colour2`` and the words naming it."""
    templates = PATTERN_TEMPLATES[pattern]
    return _fill(templates[0] if shortest else _pick(templates, rng), colour2=colour2)


def _details(
    features: Sequence[Feature],
    pattern: str,
    colour2: str | None,
    accent: str,
    rng: np.random.Generator,
    shortest: bool,
) -> list[tuple[str, tuple[str, ...]]]:
    """(sentence, naming words) of every feature, then of the pattern unless it is solid."""
    details = [feature_sentence(f, accent, rng, shortest) for f in features]
    if pattern != "solid" and colour2 is not None:
        details.append(_pattern_sentence(pattern, colour2, rng, shortest))
    return details


def _opening(template: str, garment: tuple[str, str], material: str, colour: str) -> str:
    """The garment sentence, single-spaced where the phrase has no prefix."""
    pre, noun = garment
    return _capitalise(" ".join(template.format(pre=pre, material=material, noun=noun, colour=colour).split()))


def describe(
    garments: Sequence[tuple[str, str]],
    material: str,
    colour: str,
    pattern: str,
    colour2: str | None,
    features: Sequence[Feature],
    accent: str,
    department: str,
    rng: np.random.Generator,
) -> Description:
    """A Fashion-Gen-style description of one product, named by one of its (prefix, noun) ``garments`` phrases.

    Every feature and the pattern are described; a long description falls back to the shortest opening, phrase
    and templates, and closing remarks fill what the budget leaves.
    """
    garment = garments[int(rng.integers(len(garments)))]
    template = _pick(OPENINGS, rng)
    details = _details(features, pattern, colour2, accent, rng, shortest=False)
    if word_pieces([_opening(template, garment, material, colour)] + [d[0] for d in details]) > BUDGET - 4:
        template, garment = OPENINGS[0], min(garments, key=lambda g: word_pieces(g))
        details = _details(features, pattern, colour2, accent, rng, shortest=True)
    sentences = [_opening(template, garment, material, colour)] + [sentence for sentence, _ in details]
    groups = list(CLOSERS[department])
    rng.shuffle(groups)
    room = 3 if word_pieces(sentences) < SHORT else 2
    for closer in (_pick(group, rng) for group in groups[:room]):
        if word_pieces([*sentences, closer]) <= BUDGET:
            sentences.append(closer)
    kinds = [(f.attribute, f) for f in features] + ([("pattern", None)] if len(details) > len(features) else [])
    mentions = [("garment", tuple(words(" ".join(garment))), None), ("colour", (colour,), None)]
    mentions += [(kind, named, f) for (kind, f), (_, named) in zip(kinds, details, strict=True)]
    return Description(" ".join(sentences), tuple(mentions))

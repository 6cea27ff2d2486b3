"""KPG, the kaleido patch generator (Kaleido-BERT §3.2): which grids are cut over which box of each image.

``scale-fixed`` is an 8x8 grid over the whole image (FashionBERT's, the paper's Scheme-1); ``kaleido`` the
1x1..5x5 pyramid of 55 patches over the whole image (Scheme-2); ``kaleido+sod`` the pyramid over the box a
salient-object detector locks around the garment (Scheme-3, the full model).
"""

from __future__ import annotations

from kbench.core.errors import unknown_choice
from kbench.features.patch_features import Patching
from kbench.features.patches import KALEIDO, get_scheme
from kbench.models.kaleido.akpm import AKPM_VIEWS
from kbench.models.kaleido.saliency import build_detector

KPG_VARIANTS = ("scale-fixed", "kaleido", "kaleido+sod")
SCALE_FIXED_GRID = "grid-8"


def check_kpg(name: str) -> None:
    """Refuse an unknown KPG variant with the closest known one."""
    if name not in KPG_VARIANTS:
        raise unknown_choice("kpg", name, KPG_VARIANTS)


def kpg_patching(name: str, saliency: str, akpm_views: bool) -> Patching:
    """The feature-store patching of KPG variant ``name``; ``saliency`` names the detector that locks the box, and
    ``akpm_views`` adds the views AKPM corrupts with. The 8x8 grid has no levels to take AKPM views of, so
    ``scale-fixed`` shares the baselines' ``grid-8`` store."""
    check_kpg(name)
    if name == "scale-fixed":
        return Patching(get_scheme(SCALE_FIXED_GRID))
    detector = build_detector(saliency) if name == "kaleido+sod" else None
    return Patching(KALEIDO, detector, AKPM_VIEWS if akpm_views else ())

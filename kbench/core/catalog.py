"""The zoo's names without the zoo: each built-in entry's module and description, and the installed plug-ins'
entry points, read from package metadata; likewise the frozen patch encoders. ``kbench ls models`` and ``kbench ls
encoders`` list them without importing torch, as transformers' ``CONFIG_MAPPING_NAMES`` names its models without
importing them; tests hold them equal to the registries."""

from __future__ import annotations

from importlib import metadata

from kbench.core.errors import KbenchError, unknown_choice
from kbench.core.registry import Registry

ENTRY_POINT_GROUP = "kbench.models"  # an installed package's plug-ins: name = "package.module:Class"

# name -> (the module whose @register_model registers it, its description)
BUILTIN_MODELS: dict[str, tuple[str, str]] = {
    "clip": (
        "kbench.baselines.clip",
        "CLIP-style dual encoder (not in the paper): BERT text encoder and a transformer over 8x8 patch features, "
        "symmetric contrastive loss; retrieval by cosine similarity (also the full gallery), no captioning",
    ),
    "fashionbert": (
        "kbench.baselines.fashionbert",
        "FashionBERT-style single stream [text | 8x8 patches]: MLM, ITM, masked patch feature KL, weighted by "
        "FashionBERT's adaptive loss",
    ),
    "imagebert": (
        "kbench.baselines.imagebert",
        "ImageBERT-style single stream [text | 8x8 patches]: MLM, ITM, masked object classification over codebook "
        "visual words, masked region feature regression (L2)",
    ),
    "kaleido": (
        "kbench.models.kaleido.model",
        "Kaleido-BERT: single stream [text | 55 kaleido patches of the saliency-locked garment]; AMLM with "
        "alignment-guided masking, ITM, AKPM (rotation, jigsaw, camouflage, grey/blank-to-colour KL)",
    ),
    "oscar": (
        "kbench.baselines.oscar",
        "OSCAR-style single stream [text | 8 tags | 8x8 patches], tags from an in-model image tagger (for detector "
        "tags): masked token loss over text and tags, contrastive loss with polluted tags (also ITM), tag BCE",
    ),
    "vilbert": (
        "kbench.baselines.vilbert",
        "ViLBERT-style two streams, BERT text | 8x8 patches after a mean-patch [IMG], joined by co-attention; joint = "
        "pooled [CLS] x [IMG]: MLM, masked region KL to codebook visual words (detector classes), ITM",
    ),
    "vlbert": (
        "kbench.baselines.vlbert",
        "VL-BERT-style single stream [text | 8x8 patches] with a whole-image visual embedding on every word: MLM "
        "with visual clues, masked RoI classification over codebook visual words; ITM head fine-tuned only",
    ),
}

# name -> (the module whose @ENCODERS.register registers it, its description)
BUILTIN_ENCODERS: dict[str, tuple[str, str]] = {
    "resnet50": (
        "kbench.features.encoders",
        "ResNet-50 with torchvision's parameter names; loads the ImageNet weights file the user gives (2048-d).",
    ),
    "small-cnn": (
        "kbench.features.encoders",
        "Three conv-BN-ReLU stages pre-trained on garment crops (``encoder_pretraining``); 128-d, CPU-cheap.",
    ),
}


def plugin_entry_points() -> list[metadata.EntryPoint]:
    """The installed packages' ``kbench.models`` entry points, by name."""
    return sorted(metadata.entry_points(group=ENTRY_POINT_GROUP), key=lambda e: e.name)


def model_listing() -> dict[str, str]:
    """Every zoo entry's description by name: the built-in ones from ``BUILTIN_MODELS``, each plug-in from its
    docstring (imported for it; a broken one is listed with its error)."""
    plugins: Registry[object] = Registry("model")
    for entry in plugin_entry_points():
        if entry.name not in BUILTIN_MODELS and entry.name not in plugins:
            plugins.register(entry.name, entry.value)
    listing = {name: description for name, (_, description) in BUILTIN_MODELS.items()} | descriptions(plugins)
    return dict(sorted(listing.items()))


def check_model_names(spec: str) -> None:
    """Refuse an unknown zoo entry in ``--model`` (``all``, names, ``package.module:Class``) from the catalog, before
    the zoo is imported; a ``package.module:Class`` is checked when it is imported."""
    known = [*BUILTIN_MODELS, *(e.name for e in plugin_entry_points())]
    names = [] if spec == "all" else [m.strip() for m in spec.split(",") if m.strip()]
    for name in names:
        if ":" not in name and name not in known:
            raise unknown_choice("model", name, sorted(set(known)), n=3, cutoff=0.5)


def encoder_listing() -> dict[str, str]:
    """Every frozen patch encoder's description by name, from ``BUILTIN_ENCODERS``."""
    return {name: description for name, (_, description) in sorted(BUILTIN_ENCODERS.items())}


def descriptions(registry: Registry) -> dict[str, str]:
    """Every entry's one-line description by name; a broken plug-in's is its error, so the others are still listed."""
    out = {}
    for name in registry.names():
        try:
            out[name] = registry.describe(name)
        except KbenchError as exc:
            out[name] = f"(broken) {exc}"
    return out

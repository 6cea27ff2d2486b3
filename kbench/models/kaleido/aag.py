"""AAG, Kaleido-BERT's attention-based alignment generator: which grid cell of an image each description word names.

A Show-Attend-and-Tell captioner (Xu et al. 2015: CNN grid features, an LSTM decoder with additive attention
and a gating scalar, the doubly stochastic attention regulariser) is trained on the split's images and
descriptions; each image's greedily decoded caption then gives one attention map per generated word. The paper
leaves the matching of generated to description words and the map-to-cell rule unspecified; we match lower-cased
alphabetic words (``WORD``), keep the generated words that occur in the image's own description except function
words (``STOPWORDS``) and align each to the arg-max cell, by attention mass, of every requested grid level.
Two choices keep the attention from staying flat: the encoder's sparse post-ReLU maps are standardised per
channel, and the objective weighs the regulariser against each caption's summed (not mean) word likelihood,
as the paper's does. Alignments are cached per (data file, rows, boxes, levels, encoder, config, seed). The grid
features are kept in a sharded store on disk, like the patch features, and streamed to the captioner in batches,
so memory is O(batch) whatever the split's size.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import math
import re
from collections.abc import Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any

import h5py
import numpy as np
import torch
import torch.nn.functional as F
from filelock import FileLock
from torch import nn

from kbench.core.config import build_section, digest
from kbench.core.errors import KbenchError
from kbench.core.integrity import check_file, seal_file
from kbench.core.paths import atomic_path, cache_dir
from kbench.core.progress import stage
from kbench.data.layout import IMAGE_KEY, decode
from kbench.data.loader import prefetch
from kbench.data.splits import Split, read_rows
from kbench.features.encoders import IMAGENET_MEAN, IMAGENET_STD, PatchEncoder, build_encoder
from kbench.features.patch_features import resize, rows_digest
from kbench.features.patches import PatchScheme
from kbench.features.store import ArraySpec, ShardedStore

log = logging.getLogger(__name__)

AAG_VERSION = 1
GRID_VERSION = 1
GRID, MOMENTS = "grid", "moments"
GRID_SHARD_ROWS = 1024  # about: a shard holds whole batches
WORD = re.compile(r"[a-z]+")  # words are lower-case alphabetic runs of the description ("Turn-up" -> turn, up)
# function words, never aligned
STOPWORDS = frozenset(
    {"a", "an", "the", "in", "at", "on", "of", "with", "and", "to", "for", "fit", "by", "from", "as", "or", "into"}
)
SPECIALS = ("<pad>", "<start>", "<end>", "<unk>")  # ids 0..3 of every vocabulary
PAD_ID, START_ID, END_ID, UNK_ID = range(len(SPECIALS))
REGIONS_KEY = "synth_attribute_regions"


@dataclass
class AlignmentConfig:
    """Kaleido-BERT's alignment generator (AAG): a Show-Attend-and-Tell captioner trained on the train split.
    Set as the ``aag`` option of the model, e.g. ``--set models.kaleido.aag.epochs=3``."""

    crop_size: int = 56  # locked boxes are resized to this before the encoder's feature map (14 x 14 for small-cnn)
    epochs: float = 6.0
    batch_size: int = 64
    lr: float = 2e-3
    embed_size: int = 128
    hidden_size: int = 256
    attention_size: int = 128
    vocab_min_count: int = 2
    max_words: int = 32
    attention_reg: float = 1.0  # weight of the doubly stochastic attention loss


AAG_DEFAULTS: Mapping[str, Any] = MappingProxyType(dataclasses.asdict(AlignmentConfig()))


def alignment_config(options: Mapping[str, Any]) -> AlignmentConfig:
    """The AAG settings ``options`` name, the others at their defaults; unknown keys and wrong types refused."""
    return build_section(
        AlignmentConfig, dict(options) if isinstance(options, Mapping) else options, "models.kaleido.aag"
    )


@dataclass
class Alignments:
    """Per example of a split: the (word, level, cell) triples AAG aligned."""

    pairs: list[list[tuple[str, int, int]]]  # level = grid size n (3, 4, 5); cell = row-major index in that grid
    history: list[dict[str, float]]  # per-epoch means of the word cross-entropy ("loss") and "attention_loss"


def words(text: str) -> list[str]:
    """The lower-cased alphabetic words of ``text``."""
    return WORD.findall(text.lower())


def build_vocab(texts: list[str], min_count: int) -> list[str]:
    """The special tokens, then the words occurring at least ``min_count`` times, most frequent first."""
    counts: dict[str, int] = {}
    for text in texts:
        for word in words(text):
            counts[word] = counts.get(word, 0) + 1
    kept = sorted((w for w, c in counts.items() if c >= min_count), key=lambda w: (-counts[w], w))
    return [*SPECIALS, *kept]


def encode_captions(texts: list[str], vocab: list[str], max_words: int) -> torch.Tensor:
    """``(N, max_words + 2)`` token ids ``<start> w1 .. wk <end> <pad> ..`` of the texts cut to ``max_words`` words."""
    index = {w: i for i, w in enumerate(vocab)}
    out = torch.full((len(texts), max_words + 2), PAD_ID, dtype=torch.long)
    for row, text in enumerate(texts):
        ids = [START_ID, *(index.get(w, UNK_ID) for w in words(text)[:max_words]), END_ID]
        out[row, : len(ids)] = torch.tensor(ids)
    return out


class Attention(nn.Module):
    """Additive (Bahdanau) attention of the decoder state over the L grid features."""

    def __init__(self, feature_size: int, hidden_size: int, attention_size: int) -> None:
        super().__init__()
        self.features = nn.Linear(feature_size, attention_size)
        self.hidden = nn.Linear(hidden_size, attention_size)
        self.score = nn.Linear(attention_size, 1)

    def forward(
        self, features: torch.Tensor, projected: torch.Tensor, h: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """``(context (B, C), alpha (B, L))`` for features ``(B, L, C)``, ``projected = self.features(features)``."""
        alpha = self.score(torch.tanh(projected + self.hidden(h).unsqueeze(1))).squeeze(-1).softmax(-1)
        return torch.bmm(alpha.unsqueeze(1), features).squeeze(1), alpha


class Decoder(nn.Module):
    """SAT's LSTM decoder: attend, gate the context, step the LSTM, predict the word from state and context."""

    def __init__(self, vocab_size: int, feature_size: int, cfg: AlignmentConfig) -> None:
        super().__init__()
        self.embed = nn.Embedding(vocab_size, cfg.embed_size)
        self.attention = Attention(feature_size, cfg.hidden_size, cfg.attention_size)
        self.init_h = nn.Linear(feature_size, cfg.hidden_size)
        self.init_c = nn.Linear(feature_size, cfg.hidden_size)
        self.gate = nn.Linear(cfg.hidden_size, feature_size)  # SAT's gate beta, per channel as is common
        self.cell = nn.LSTMCell(cfg.embed_size + feature_size, cfg.hidden_size)
        self.out = nn.Linear(cfg.hidden_size + feature_size, vocab_size)

    def start(self, features: torch.Tensor) -> tuple[torch.Tensor, tuple[torch.Tensor, torch.Tensor]]:
        """The attention projection of the features and the initial LSTM state (from their mean)."""
        mean = features.mean(1)
        return self.attention.features(features), (torch.tanh(self.init_h(mean)), torch.tanh(self.init_c(mean)))

    def step(
        self,
        tokens: torch.Tensor,
        state: tuple[torch.Tensor, torch.Tensor],
        features: torch.Tensor,
        projected: torch.Tensor,
    ) -> tuple[torch.Tensor, tuple[torch.Tensor, torch.Tensor], torch.Tensor]:
        """One step from the previous words: ``(output (B, hidden + C), state, alpha (B, L))``."""
        h, c = state
        context, alpha = self.attention(features, projected, h)
        context = torch.sigmoid(self.gate(h)) * context
        h, c = self.cell(torch.cat([self.embed(tokens), context], -1), (h, c))
        return torch.cat([h, context], -1), (h, c), alpha

    def forward(self, features: torch.Tensor, captions: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Teacher-forced logits ``(B, T, V)`` of ``captions[:, 1:]`` and the attention maps ``(B, T, L)``."""
        projected, state = self.start(features)
        outputs, alphas = [], []
        for t in range(captions.shape[1] - 1):
            output, state, alpha = self.step(captions[:, t], state, features, projected)
            outputs.append(output)
            alphas.append(alpha)
        return self.out(torch.stack(outputs, 1)), torch.stack(alphas, 1)

    def greedy(self, features: torch.Tensor, max_words: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Greedily decoded tokens ``(B, T)`` and the attention map of each ``(B, T, L)``, ``T <= max_words``."""
        projected, state = self.start(features)
        tokens = torch.full((len(features),), START_ID, dtype=torch.long, device=features.device)
        ended = torch.zeros_like(tokens, dtype=torch.bool)
        out, alphas = [], []
        for _ in range(max_words):
            output, state, alpha = self.step(tokens, state, features, projected)
            tokens = self.out(output).argmax(-1)
            out.append(tokens)
            alphas.append(alpha)
            ended |= tokens == END_ID
            if ended.all():
                break
        return torch.stack(out, 1), torch.stack(alphas, 1)


def attention_loss(alphas: torch.Tensor, mask: torch.Tensor, weight: float) -> torch.Tensor:
    """The doubly stochastic regulariser ``weight * sum_i (1 - sum_t alpha_ti)^2`` over real steps, batch mean."""
    totals = (alphas * mask.unsqueeze(-1)).sum(1)
    return weight * (1 - totals).square().sum(1).mean()


def cell_overlap(n: int, h: int, w: int) -> torch.Tensor:
    """``(n*n, h*w)``: the share of each feature cell's area inside each cell of the ``n x n`` grid (columns sum to 1).

    Both grids tile the box in normalised coordinates: grid cell ``c`` spans ``[c/n, (c+1)/n]``, feature cell
    ``j`` of ``w`` spans ``[j/w, (j+1)/w]``. Lengths are counted in integer units of ``1/(n*m)`` so that a feature
    cell split evenly gives exactly equal shares (the arg-max then takes the first cell).
    """

    def shares(m: int) -> torch.Tensor:  # (n, m): length of [c/n, (c+1)/n] & [j/m, (j+1)/m], times m
        c, j = torch.arange(n).view(-1, 1), torch.arange(m).view(1, -1)
        return (torch.minimum((c + 1) * m, (j + 1) * n) - torch.maximum(c * m, j * n)).clamp(min=0) / n

    return torch.einsum("ri,cj->rcij", shares(h), shares(w)).reshape(n * n, h * w)


def assign_cells(alphas: torch.Tensor, overlap: torch.Tensor) -> torch.Tensor:
    """The grid cell of most attention mass for each ``(..., h*w)`` attention map (``overlap`` from cell_overlap)."""
    return (alphas @ overlap.T).argmax(-1)


def load_alignments(
    split: Split,
    boxes: np.ndarray,
    box_key: str,
    levels: tuple[int, ...],
    encoder_name: str,
    encoder_weights: str | None,
    cfg: AlignmentConfig,
    device: torch.device,
    seed: int,
    workers: int = 0,
) -> Alignments:
    """Train the captioner on ``split`` and align its examples, or load the cached result.

    The cache is keyed by the split's file fingerprint and rows, ``box_key`` (and the boxes), ``levels``, the
    encoder, ``cfg`` and ``seed``; the JSON file is written atomically under ``cache_dir("alignments")``, its checksum
    after it, and computed again (with a warning) when it fails the checksum.
    ``workers`` processes read the grid features ahead of the captioner.
    """
    boxes = np.asarray(boxes, dtype=np.int64)
    if boxes.shape != (len(split), 4):
        raise KbenchError(f"AAG needs one box per example: got boxes of shape {boxes.shape} for {len(split)}")
    if not levels or min(levels) < 1:
        raise KbenchError(f"AAG needs grid levels of at least 1, got {levels}")
    encoder = build_encoder(encoder_name, encoder_weights)
    key = digest(
        AAG_VERSION,
        split.file_fingerprint,
        split.meta["row"].tolist(),
        box_key,
        hashlib.sha256(boxes.tobytes()).hexdigest(),
        list(levels),
        encoder_name,
        encoder.weights_id(),
        dataclasses.asdict(cfg),
        seed,
    )
    path = cache_dir("alignments") / f"{split.path.stem}-{split.name}-{key}.json"
    with FileLock(str(path) + ".lock"):
        problem = check_file(path) if path.exists() else None
        if problem is not None:
            log.warning("cached alignments %s are damaged (%s); computing them again", path, problem)
            path.unlink()
        if not path.exists():
            log.info("training the AAG captioner on %d images of %s", len(split), split.path.name)
            grids = grid_features(split, boxes, encoder_name, encoder.to(device), cfg, device)
            alignments = align(split, grids, levels, cfg, device, seed, workers)
            with atomic_path(path) as tmp:
                tmp.write_text(json.dumps(dataclasses.asdict(alignments), separators=(",", ":")))
            seal_file(path)
    data = json.loads(path.read_text())
    return Alignments([[tuple(p) for p in pairs] for pairs in data["pairs"]], data["history"])


def align(
    split: Split,
    grids: GridFeatures,
    levels: tuple[int, ...],
    cfg: AlignmentConfig,
    device: torch.device,
    seed: int,
    workers: int = 0,
) -> Alignments:
    """Train the captioner on the grid features and align the generated words of every example."""
    descriptions = split.meta["description"].tolist()
    vocab = build_vocab(descriptions, cfg.vocab_min_count)
    captions = encode_captions(descriptions, vocab, cfg.max_words)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        decoder = Decoder(len(vocab), grids.channels, cfg).to(device)
    history = train(decoder, grids, captions, cfg, seed, device, workers)
    overlaps = {n: cell_overlap(n, *grids.size).to(device) for n in levels}
    pairs = []
    decoder.eval()
    count = -(-len(grids) // cfg.batch_size)

    def batch(i: int) -> torch.Tensor:
        return grids.batch(np.arange(i * cfg.batch_size, min((i + 1) * cfg.batch_size, len(grids))))

    with torch.inference_mode(), stage("AAG alignment", len(split)) as advance:
        for i, features in enumerate(prefetch(batch, range(count), workers, pin=device.type == "cuda")):
            tokens, alphas = decoder.greedy(features.to(device, non_blocking=True).float(), cfg.max_words)
            start = i * cfg.batch_size
            for row, (ids, maps) in enumerate(zip(tokens.tolist(), alphas, strict=True)):
                pairs.append(align_words(ids, maps, vocab, descriptions[start + row], overlaps))
            advance(len(tokens))
    return Alignments(pairs, history)


def align_words(
    ids: list[int], alphas: torch.Tensor, vocab: list[str], description: str, overlaps: dict[int, torch.Tensor]
) -> list[tuple[str, int, int]]:
    """The (word, level, cell) triples of one generated caption: each kept word's summed maps, arg-max per level."""
    allowed = set(words(description)) - STOPWORDS
    maps: dict[str, torch.Tensor] = {}
    for t, token in enumerate(ids):
        if token == END_ID:
            break
        if vocab[token] in allowed:
            maps[vocab[token]] = maps.get(vocab[token], 0) + alphas[t]
    if not maps:
        return []
    stacked = torch.stack(list(maps.values()))
    cells = {n: assign_cells(stacked, overlap).tolist() for n, overlap in overlaps.items()}
    return [(word, n, cells[n][k]) for k, word in enumerate(maps) for n in overlaps]


class GridFeatures:
    """The encoder's feature maps of every example's box crop, in a sharded store, read in standardised batches.

    Each channel is standardised over all cells of the split: the encoder's post-ReLU maps are sparse and small,
    which leaves the additive attention scores nearly flat. The statistics come from the float32 maps, summed batch
    by batch in the store's order as extraction wrote them (each shard keeps its batches' sums).
    """

    def __init__(self, store: ShardedStore) -> None:
        self.store = store
        moments = torch.zeros(2, store.arrays[GRID].shape[-1], dtype=torch.float64)
        for shard in range(store.num_shards):
            for batch in torch.from_numpy(store.read_extra(shard, MOMENTS)):
                moments += batch
        length = store.arrays[GRID].shape[0]
        self.centre = moments[0] / store.rows / length
        self.scale = (moments[1] / store.rows / length - self.centre.square()).clamp(min=1e-12).sqrt()
        self.size = tuple(store.info["size"])

    def __len__(self) -> int:
        return self.store.rows

    @property
    def channels(self) -> int:
        return int(self.store.arrays[GRID].shape[-1])

    def batch(self, positions: np.ndarray) -> torch.Tensor:
        """``(b, h*w, C)`` standardised float16 features of the examples at ``positions`` (float32 on the device)."""
        raw = torch.from_numpy(self.store.read(GRID, positions))
        return ((raw.double() - self.centre) / self.scale).to(torch.float16)


@torch.inference_mode()
def grid_features(
    split: Split,
    boxes: np.ndarray,
    encoder_name: str,
    encoder: PatchEncoder,
    cfg: AlignmentConfig,
    device: torch.device,
) -> GridFeatures:
    """The feature maps of every example's box crop, extracted into their store shard by shard (resumable)."""
    probe = encoder.feature_map(torch.zeros(1, 3, cfg.crop_size, cfg.crop_size, device=device))
    channels, size = probe.shape[1], (probe.shape[2], probe.shape[3])
    key = digest(
        GRID_VERSION,
        split.file_fingerprint,
        rows_digest(split),
        hashlib.sha256(boxes.tobytes()).hexdigest(),
        encoder_name,
        encoder.weights_id(),
        cfg.crop_size,
        cfg.batch_size,
    )
    root = cache_dir("aag-grids") / f"{split.path.stem}-{split.name}-{encoder_name}-{key}"
    arrays = {GRID: ArraySpec((size[0] * size[1], channels), "float16")}
    info = {"kind": "AAG grid features", "size": list(size), "crop_size": cfg.crop_size, "batch_size": cfg.batch_size}
    shard_rows = cfg.batch_size * max(1, GRID_SHARD_ROWS // cfg.batch_size)  # whole batches: the moments' order
    with FileLock(str(root.parent / f"{root.name}.lock")):
        store = ShardedStore.create(root, len(split), shard_rows, arrays, info)
        store.clean()
        store.drop_damaged()
        missing = store.missing()
        rows = split.meta["row"].to_numpy()
        with stage("AAG features", sum(len(store.shard_span(k)) for k in missing)) as advance:
            for shard in missing:
                span = store.shard_span(shard)
                with h5py.File(split.path, "r") as f, store.shard_writer(shard) as writer:
                    moments = []
                    for start in range(span.start, span.stop, cfg.batch_size):
                        positions = np.arange(start, min(start + cfg.batch_size, span.stop))
                        cells = box_feature_maps(f[IMAGE_KEY], rows[positions], boxes[positions], encoder, cfg, device)
                        moments.append(torch.stack([cells.sum((0, 1)), cells.square().sum((0, 1))]).double().cpu())
                        writer.append({GRID: cells.to(torch.float16).cpu().numpy()})
                        advance(len(positions))
                    writer.save(MOMENTS, torch.stack(moments).numpy())
    return GridFeatures(store)


def box_feature_maps(
    images: h5py.Dataset,
    rows: np.ndarray,
    boxes: np.ndarray,
    encoder: PatchEncoder,
    cfg: AlignmentConfig,
    device: torch.device,
) -> torch.Tensor:
    """``(B, h*w, C)`` float32 feature maps of the ``(B, 4)`` box crops of the images at file ``rows``."""
    mean = torch.tensor(IMAGENET_MEAN, device=device).view(1, 3, 1, 1)
    std = torch.tensor(IMAGENET_STD, device=device).view(1, 3, 1, 1)
    x = torch.from_numpy(read_rows(images, rows)).to(device).permute(0, 3, 1, 2).float().div_(255)
    crops = [
        resize(img[None, :, y1:y2, x1:x2], cfg.crop_size)
        for img, (x1, y1, x2, y2) in zip(x, boxes.tolist(), strict=True)
    ]
    maps = encoder.feature_map((torch.cat(crops) - mean) / std)
    return maps.flatten(2).transpose(1, 2)


def train(
    decoder: Decoder,
    grids: GridFeatures,
    captions: torch.Tensor,
    cfg: AlignmentConfig,
    seed: int,
    device: torch.device,
    workers: int = 0,
) -> list[dict[str, float]]:
    """Teacher-forced Adam training for ``cfg.epochs`` (fractions allowed); per-epoch means of the losses.

    The objective is SAT's per caption: the summed word negative log-likelihood plus the attention regulariser
    (averaging the likelihood over words instead would weigh the regulariser some 20 times more and flatten the
    attention). ``loss`` is reported per word, ``attention_loss`` per caption. Batches are read from the grid
    store by ``workers`` processes ahead of the step.
    """
    n = len(grids)
    per_epoch = math.ceil(n / cfg.batch_size)
    steps = max(1, round(cfg.epochs * per_epoch))
    generator = torch.Generator().manual_seed(seed)
    orders = [torch.randperm(n, generator=generator) for _ in range(math.ceil(steps / per_epoch))]

    def batch(step: int) -> tuple[torch.Tensor, torch.Tensor]:
        chosen = orders[step // per_epoch][(step % per_epoch) * cfg.batch_size :][: cfg.batch_size]
        caps = captions[chosen]
        return grids.batch(chosen.numpy()), caps[:, : int((caps != PAD_ID).sum(1).max())]  # no all-padding tail

    optimizer = torch.optim.Adam(decoder.parameters(), lr=cfg.lr)
    decoder.train()
    history: list[dict[str, float]] = []
    sums = torch.zeros(2)
    with stage("AAG captioner training", steps) as advance:
        for step, (features, caps) in enumerate(prefetch(batch, range(steps), workers, pin=device.type == "cuda")):
            features, caps = features.to(device, non_blocking=True).float(), caps.to(device, non_blocking=True)
            logits, alphas = decoder(features, caps)
            targets = caps[:, 1:]
            mask = (targets != PAD_ID).float()
            nll = F.cross_entropy(logits.flatten(0, 1), targets.flatten(), ignore_index=PAD_ID, reduction="sum")
            att_loss = attention_loss(alphas, mask, cfg.attention_reg)
            optimizer.zero_grad(set_to_none=True)
            (nll / len(caps) + att_loss).backward()  # SAT's objective: the caption's NLL plus the regulariser
            optimizer.step()
            sums += torch.stack([nll.detach() / mask.sum(), att_loss.detach()]).cpu()
            advance(1)
            if (step + 1) % per_epoch == 0 or step + 1 == steps:
                count = (step % per_epoch) + 1
                history.append({"loss": float(sums[0]) / count, "attention_loss": float(sums[1]) / count})
                sums.zero_()
    return history


def read_regions(split: Split) -> list[list[dict]] | None:
    """The ground-truth attribute regions of each example (SynthFashion's ``synth_attribute_regions``), else None."""
    with h5py.File(split.path, "r") as f:
        if REGIONS_KEY not in f:
            return None
        column = decode(f[REGIONS_KEY][:])
    return [json.loads(column[row]) for row in split.meta["row"]]


def score_alignments(
    alignments: Alignments, boxes: np.ndarray, regions: list[list[dict]], levels: tuple[int, ...]
) -> dict[str, float]:
    """Precision, recall and chance of the alignments per level against attribute regions, and words per image.

    An alignment (word, n, cell) is *scorable* when the word is one of the words of an attribute region of its
    example, and *correct* when the cell's pixel box (cell of the n x n grid over the example's box) overlaps
    the box of such a region by at least half of the smaller of the two areas. ``precision_l{n}`` = correct /
    scorable alignments at level n; ``recall_l{n}`` = share of the attribute mentions (region entries) for which
    at least one of its words got a cell correct for that region at level n; ``chance_l{n}`` = mean, over scorable
    alignments, of the share of the n*n cells that would have been correct (what a random cell would score).
    Those are fractions in [0, 1] (NaN when undefined); ``words_per_image`` is the mean count of aligned words.
    """
    if not (len(alignments.pairs) == len(boxes) == len(regions)):
        raise KbenchError(f"{len(alignments.pairs)} alignments, {len(boxes)} boxes and {len(regions)} region lists")
    out: dict[str, float] = {}
    for n in levels:
        scheme = PatchScheme(f"grid-{n}", (n,))
        scorable = correct = mentions = found = 0
        chance = 0.0
        for pairs, box, entries in zip(alignments.pairs, boxes, regions, strict=True):
            cells = scheme.boxes(tuple(int(v) for v in box))
            hits = [_hits(cells, entry["box"]) for entry in entries]  # (n*n,) bool per entry
            good = set()  # indices of the entries some alignment got right
            for word, level, cell in pairs:
                named = [k for k, entry in enumerate(entries) if word in entry["words"]]
                if level != n or not named:
                    continue
                any_hit = np.any([hits[k] for k in named], axis=0)
                scorable += 1
                correct += bool(any_hit[cell])
                chance += float(any_hit.mean())
                good.update(k for k in named if hits[k][cell])
            mentions += len(entries)
            found += len(good)
        out[f"precision_l{n}"] = correct / scorable if scorable else math.nan
        out[f"recall_l{n}"] = found / mentions if mentions else math.nan
        out[f"chance_l{n}"] = chance / scorable if scorable else math.nan
    per_image = [len({word for word, _, _ in pairs}) for pairs in alignments.pairs]
    out["words_per_image"] = float(np.mean(per_image)) if per_image else math.nan
    return out


def _hits(cells: np.ndarray, box: list[int]) -> np.ndarray:
    """Which ``(K, 4)`` cells overlap ``box`` by at least half of the smaller of the two areas."""
    x1, y1, x2, y2 = box
    iw = (np.minimum(cells[:, 2], x2) - np.maximum(cells[:, 0], x1)).clip(min=0)
    ih = (np.minimum(cells[:, 3], y2) - np.maximum(cells[:, 1], y1)).clip(min=0)
    cell_area = (cells[:, 2] - cells[:, 0]) * (cells[:, 3] - cells[:, 1])
    smaller = np.minimum(cell_area, (x2 - x1) * (y2 - y1))
    return (iw * ih > 0) & (2 * iw * ih >= smaller)

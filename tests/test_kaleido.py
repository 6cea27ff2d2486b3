"""Kaleido-BERT: AGM's invariants, each AKPM corruption and its label, the collator, the model and its heads."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch
from pretrained import minilm_checkpoint
from zoo_inputs import ALIGNED, KALEIDO_DIM, kaleido_data

from kbench.core.errors import KbenchError
from kbench.features.batches import to_device
from kbench.features.patch_features import Patching
from kbench.features.patches import KALEIDO, get_scheme
from kbench.models.kaleido.agm import PATCH_BUDGETS, plan_masks, text_budget
from kbench.models.kaleido.akpm import (
    AKPM_VARIANTS,
    PERMUTATIONS,
    gather_cells,
    jigsaw,
    parse_akpm,
    put_cells,
    rotate,
    unjigsaw,
)
from kbench.models.kaleido.collator import KaleidoCollator, index_words
from kbench.models.kaleido.kpg import kpg_patching
from kbench.models.kaleido.model import KaleidoBertConfig, KaleidoBertForPreTraining
from kbench.models.losses import feature_kl
from kbench.models.zoo import MODELS, build_model, check_options

SIZES = {
    "hidden_size": 32,
    "num_hidden_layers": 2,
    "num_attention_heads": 2,
    "intermediate_size": 64,
    "hidden_dropout_prob": 0.0,
    "attention_probs_dropout_prob": 0.0,
}
D = KALEIDO_DIM


def test_akpm_specs_parse_to_the_papers_task_sets() -> None:
    assert parse_akpm("B") == ()
    assert parse_akpm("B+I") == ("rr",)
    assert parse_akpm("B+I~III") == ("rr", "jps", "cp")
    assert parse_akpm("B+I~V") == ("rr", "jps", "cp", "g2cm", "b2cm")
    assert parse_akpm("B+V") == ("b2cm",)
    assert parse_akpm("B+II+IV") == ("jps", "g2cm")
    assert [len(parse_akpm(v)) for v in AKPM_VARIANTS] == [0, 1, 2, 3, 4, 5, 1]
    for bad in ("I~V", "B+VI", "B+III~I", "B+"):
        with pytest.raises(KbenchError, match="bad akpm"):
            parse_akpm(bad)


def test_the_24_permutation_table() -> None:
    assert PERMUTATIONS.shape == (24, 4)
    assert [tuple(p) for p in PERMUTATIONS.tolist()] == list(itertools.permutations(range(4)))
    assert PERMUTATIONS[0].tolist() == [0, 1, 2, 3] and PERMUTATIONS[23].tolist() == [3, 2, 1, 0]


def test_each_corruption_is_recovered_by_its_label() -> None:
    g = torch.Generator().manual_seed(0)
    b = 24
    whole, rotated = torch.rand(b, 1, D, generator=g), torch.rand(b, 3, D, generator=g)
    labels = torch.arange(b) % 4
    out = rotate(whole, rotated, labels)
    for i in range(b):
        expected = whole[i, 0] if labels[i] == 0 else rotated[i, labels[i] - 1]
        assert torch.equal(out[i, 0], expected)

    quarters = torch.rand(b, 4, D, generator=g)
    perm = torch.arange(b)
    shuffled = jigsaw(quarters, perm)
    for i in range(b):
        for slot in range(4):
            assert torch.equal(shuffled[i, slot], quarters[i, PERMUTATIONS[i, slot]])
    assert torch.equal(unjigsaw(shuffled, perm), quarters)
    assert torch.equal(shuffled[0], quarters[0])  # label 0 is the identity

    level3, decoy = torch.rand(b, 9, D, generator=g), torch.rand(b, 1, D, generator=g)
    cells = torch.randint(9, (b, 1), generator=g)
    camouflaged = put_cells(level3.clone(), cells, decoy)
    changed = (camouflaged != level3).any(-1)
    assert torch.equal(changed.float().argmax(1), cells[:, 0]) and (changed.sum(1) == 1).all()

    level5 = torch.rand(b, 25, D, generator=g) + 0.1
    blank = torch.stack([torch.randperm(25, generator=g)[:3] for _ in range(b)])
    zeroed = put_cells(level5.clone(), blank, torch.zeros(b, 3, D))
    assert torch.equal((zeroed == 0).all(-1).nonzero()[:, 1].view(b, 3).sort(1).values, blank.sort(1).values)
    assert torch.equal(gather_cells(level5, blank), level5[torch.arange(b)[:, None], blank])


def test_agm_budgets_and_never_both_sides_of_a_pair() -> None:
    rng = np.random.default_rng(0)
    for trial in range(300):
        n_words = int(rng.integers(3, 15))
        sizes = rng.integers(1, 3, size=n_words)
        pairs = [
            (int(rng.integers(n_words)), int(n), int(rng.integers(n * n)))
            for n in (3, 4, 5)
            for _ in range(int(rng.integers(0, 4)))
        ]
        budget = text_budget(int(sizes.sum()), 0.15, 10)
        plan = plan_masks(sizes, pairs, budget, PATCH_BUDGETS, True, 0.5, rng)
        assert {n: len(c) for n, c in plan.cells.items()} == PATCH_BUDGETS
        for n, cells in plan.cells.items():
            assert len(set(cells)) == len(cells) and all(0 <= c < n * n for c in cells)
        assert len(set(plan.words)) == len(plan.words)
        assert sizes[plan.words].sum() <= budget
        paired = {w for w, n, c in pairs if c in plan.cells[n]}
        maskable = [w for w in range(n_words) if w not in paired and sizes[w] <= budget]
        assert plan.words or not maskable, "a text keeps its budget unless every word's partner is masked"
        for w, n, c in pairs:
            assert not (w in plan.words and c in plan.cells[n]), f"trial {trial}: both sides of {(w, n, c)} masked"


def test_agm_takes_aligned_pairs_first_and_falls_back_to_random() -> None:
    rng = np.random.default_rng(1)
    sizes = np.ones(20, dtype=np.int64)
    pairs = [(4, 3, 7), (9, 4, 2), (9, 5, 13), (11, 5, 0)]
    hits = 0
    for _ in range(200):
        plan = plan_masks(sizes, pairs, 3, PATCH_BUDGETS, True, 0.5, rng)
        # every pair is taken on one side or the other: the word or the cell is masked
        taken = [(w in plan.words) or (c in plan.cells[n]) for w, n, c in pairs]
        hits += all(taken)
    assert hits == 200
    # with no alignments every budget is still filled, at random
    plan = plan_masks(sizes, [], 3, PATCH_BUDGETS, True, 0.5, rng)
    assert len(plan.words) == 3 and {n: len(c) for n, c in plan.cells.items()} == PATCH_BUDGETS
    # the random ablation ignores the pairs: aligned words are no likelier than the others
    counts = np.zeros(20)
    for _ in range(2000):
        counts[plan_masks(sizes, pairs, 3, PATCH_BUDGETS, False, 0.5, rng).words] += 1
    assert abs(counts[[4, 9, 11]].mean() / counts.mean() - 1) < 0.15


def tiny_model(**options) -> KaleidoBertForPreTraining:
    torch.manual_seed(0)
    return build_model("kaleido", None, vocab_size=30522, visual_feature_size=D, **SIZES, **options)


def collated(model: KaleidoBertForPreTraining, seed: int = 0) -> tuple[dict, dict]:
    data, tokenizer = kaleido_data()
    images = torch.tensor([0, 1, 2, 3, 0, 1])
    texts = torch.tensor([0, 1, 2, 3, 2, 3])  # the last two pairs are mismatched
    raw = data.inputs(images.numpy(), texts.numpy(), views=True)
    raw |= {"itm_labels": (images == texts).long(), "image_positions": images, "text_positions": texts}
    collate = KaleidoCollator(model.config, tokenizer, data, ALIGNED)
    batch = collate(dict(raw), torch.Generator().manual_seed(seed))
    cpu = torch.device("cpu")
    return to_device(batch, cpu), to_device(raw, cpu)  # float16 features become float32, as training moves them


def test_words_are_indexed_from_word_pieces() -> None:
    data, tokenizer = kaleido_data()
    sizes, pairs = index_words(tokenizer, data.text, ALIGNED)
    tokens = tokenizer.convert_ids_to_tokens(data.text.input_ids[0].tolist())
    words = data.text.word_ids[0].tolist()
    for w, n, c in pairs[0]:
        spelled = "".join(t.removeprefix("##") for t, i in zip(tokens, words, strict=True) if i == w)
        assert (spelled, n, c) in ALIGNED[0]
    assert len(pairs[0]) == 6 and pairs[2] == []
    assert sizes[0].sum() == (data.text.word_ids[0] >= 0).sum()


def test_collator_corrupts_each_level_as_its_labels_say() -> None:
    model = tiny_model()
    batch, raw = collated(model)
    clean, feats = raw["patch_features"], batch["patch_features"]
    data, _ = kaleido_data()
    images = raw["image_positions"]
    s1, s2, s3, s4, s5 = KALEIDO.level_slices()
    rr = batch["rr_labels"]
    for i in range(len(images)):
        rotated = data.features.view("rotated", images[i : i + 1].numpy())[0].float()
        expected = clean[i, s1][0] if rr[i] == 0 else rotated[rr[i] - 1]
        assert torch.equal(feats[i, s1][0], expected)
    assert torch.equal(unjigsaw(feats[:, s2], batch["jps_labels"]), clean[:, s2])
    changed = (feats[:, s3] != clean[:, s3]).any(-1)
    assert torch.equal(changed.nonzero()[:, 1], batch["cp_labels"])  # exactly the labelled cell moved
    grey = data.features.view("grey", images.numpy()).float()
    assert torch.equal(gather_cells(feats[:, s4], batch["grey_cells"]), gather_cells(grey, batch["grey_cells"]))
    assert torch.equal(batch["grey_targets"], gather_cells(clean[:, s4], batch["grey_cells"]))
    assert (gather_cells(feats[:, s5], batch["blank_cells"]) == 0).all()
    assert torch.equal(batch["blank_targets"], gather_cells(clean[:, s5], batch["blank_cells"]))
    untouched = torch.ones(len(images), 25, dtype=torch.bool)
    untouched[torch.arange(len(images))[:, None], batch["blank_cells"]] = False
    assert torch.equal(feats[:, s5][untouched], clean[:, s5][untouched])
    # text: whole words, at most 10 tokens, never special tokens; mismatched pairs are masked alike
    labelled = batch["mlm_labels"] != -100
    assert (labelled.sum(1) >= 1).all() and (labelled.sum(1) <= 10).all()
    assert not labelled[raw["word_ids"] < 0].any()
    for i in range(len(images)):
        masked_words = set(raw["word_ids"][i][labelled[i]].tolist())
        assert labelled[i].sum() == sum((raw["word_ids"][i] == w).sum() for w in masked_words)


def test_collator_respects_the_selected_tasks() -> None:
    """A variant's tasks decide the corruptions and targets; the cells AGM chose at a level whose task is off
    (those B+I~V camouflages, greys or blanks) are zeroed, and nothing else changes."""
    full, _ = collated(tiny_model())
    chosen = {3: full["cp_labels"][:, None], 4: full["grey_cells"], 5: full["blank_cells"]}
    s = dict(zip(KALEIDO.levels, KALEIDO.level_slices(), strict=True))
    rows = torch.arange(6)[:, None]
    for variant, blanked in (("B+V", (3, 4)), ("B", (3, 4, 5))):
        batch, raw = collated(tiny_model(akpm=variant))
        assert {"rr_labels", "jps_labels", "cp_labels", "grey_cells"}.isdisjoint(batch)
        assert ("blank_cells" in batch) == (variant == "B+V")
        if variant == "B+V":
            assert torch.equal(batch["blank_cells"], chosen[5])
        clean, feats = raw["patch_features"], batch["patch_features"]
        assert torch.equal(feats[:, : s[3].start], clean[:, : s[3].start]), "no rotation, no jigsaw"
        for n in blanked:
            expected = torch.zeros(6, n * n, dtype=torch.bool)
            expected[rows, chosen[n]] = True
            zeroed = (feats[:, s[n]] == 0).all(-1)
            assert torch.equal(zeroed, expected), f"{variant}: level {n} zeroes exactly B+I~V's cells"
            assert torch.equal(feats[:, s[n]][~zeroed], clean[:, s[n]][~zeroed])


def aligned_word_share(batch: dict, raw: dict, pairs: list, texts: torch.Tensor) -> tuple[int, int]:
    """``(masked, all)`` aligned words of a collated batch: words with an alignment whose tokens are masked."""
    masked = total = 0
    for i, t in enumerate(texts.tolist()):
        aligned = {w for w, _, _ in pairs[t]}
        labelled = set(raw["word_ids"][i][batch["mlm_labels"][i] != -100].tolist())
        masked, total = masked + len(aligned & labelled), total + len(aligned)
    return masked, total


def test_every_akpm_variant_masks_the_same_words_and_cells() -> None:
    """Table 4's AKPM columns differ only in their pretext tasks: for a batch and seed, every variant masks the
    words and the cells of B+I~V (1, 2 and 3 cells at levels 3, 4 and 5, up to 15 % of the tokens), so the
    share of aligned words masked is one number across the block."""
    data, tokenizer = kaleido_data()
    sizes, pairs = index_words(tokenizer, data.text, ALIGNED)
    images, texts = torch.tensor([0, 1, 2, 3, 0, 1, 3]), torch.tensor([0, 1, 2, 3, 2, 3, 3])
    raw = data.inputs(images.numpy(), texts.numpy(), views=True)
    raw |= {"itm_labels": (images == texts).long(), "image_positions": images, "text_positions": texts}
    raw = to_device(raw, torch.device("cpu"))
    s = dict(zip(KALEIDO.levels, KALEIDO.level_slices(), strict=True))
    budgets = [text_budget(int(sizes[t].sum()), 0.15, 10) for t in texts.tolist()]
    seen: dict[str, list] = {}
    shares = {}
    for variant in AKPM_VARIANTS:
        config = KaleidoBertConfig(akpm=variant, visual_feature_size=D, **SIZES)
        collate = KaleidoCollator(config, tokenizer, data, ALIGNED)
        masked = total = 0
        seen[variant] = []
        for seed in range(12):
            batch = collate(dict(raw), torch.Generator().manual_seed(seed))
            cells = {
                n: (batch["patch_features"][:, s[n]] != raw["patch_features"][:, s[n]]).any(-1) for n in (3, 4, 5)
            }
            for n, k in PATCH_BUDGETS.items():
                assert (cells[n].sum(1) == k).all(), f"{variant}: {k} cells at level {n} in every example"
            labelled = batch["mlm_labels"] != -100
            assert (labelled.sum(1) <= torch.tensor(budgets)).all() and (labelled.sum(1) >= 1).all()
            seen[variant].append((batch["input_ids"], batch["mlm_labels"], cells))
            m, t = aligned_word_share(batch, raw, pairs, texts)
            masked, total = masked + m, total + t
        shares[variant] = masked / total
    for variant in AKPM_VARIANTS:
        for (ids, labels, cells), (ids_full, labels_full, cells_full) in zip(
            seen[variant], seen["B+I~V"], strict=True
        ):
            assert torch.equal(labels, labels_full) and torch.equal(ids, ids_full), f"{variant} masks other words"
            assert all(torch.equal(cells[n], cells_full[n]) for n in cells), f"{variant} masks other cells"
    assert len(set(shares.values())) == 1, shares
    assert 0 < shares["B"] < 1, "some aligned pairs are masked on the cell side, in B too"


def test_kpg_kaleido_and_kaleido_sod_mask_alike() -> None:
    """The two pyramid KPG variants share budgets and masking; on one store and alignments their batches agree
    (what tells them apart is the box their features and alignments were cut from)."""
    sod, _ = collated(tiny_model())
    whole, _ = collated(tiny_model(kpg="kaleido"))
    assert sod.keys() == whole.keys() and all(torch.equal(sod[k], whole[k]) for k in sod)


def test_forward_heads_and_hidden_states() -> None:
    model = tiny_model().eval()
    batch, _ = collated(model)
    out = model(**batch)
    assert model.jps_head.in_features == 4 * 32 and model.cp_head.in_features == 9 * 32
    assert model.g2cm_head.bias is None and model.g2cm_head.out_features == D
    # G2CM is the KL of the head's output at the grey cells against their colour features
    hidden = model.vl(batch["input_ids"], batch["attention_mask"], batch["patch_features"], batch["patch_locations"])
    level4 = hidden.last_hidden_state[:, 24 + 14 : 24 + 30]
    direct = feature_kl(model.g2cm_head(gather_cells(level4, batch["grey_cells"])), batch["grey_targets"])
    torch.testing.assert_close(out.losses["g2cm_loss"], direct)
    assert hidden.last_hidden_state.shape == (6, 24 + 55, 32)


def test_patch_embeddings_have_one_projection_and_layernorm_per_level() -> None:
    emb = tiny_model().vl.patch_embeddings
    assert len(emb.feature_projections) == 5 and len(emb.LayerNorm) == 5
    assert all(p.bias is None for p in emb.feature_projections) and emb.location_projection.bias is None
    assert emb.level_embeddings.num_embeddings == 6
    # a level's type embedding moves only that level's outputs
    emb.eval()
    feats, locs = torch.rand(2, 55, D), torch.rand(2, 55, 5)
    before = emb(feats, locs)
    with torch.no_grad():
        emb.level_embeddings.weight[3] += 1.0
    moved = (emb(feats, locs) - before).abs().sum(-1) > 1e-6
    assert moved[:, 5:14].all() and not moved[:, :5].any() and not moved[:, 14:].any()


def test_sigmoid_itm_head_scores_like_a_sigmoid() -> None:
    model = tiny_model(itm_head="sigmoid")
    assert model.itm_head.out_features == 1
    pooled = torch.randn(5, 32)
    logits = model.itm_from_pooled(pooled)
    torch.testing.assert_close(logits.softmax(-1)[:, 1], torch.sigmoid(model.itm_head(pooled)[:, 0]))


def test_scale_fixed_has_no_level_tasks_and_options_are_checked() -> None:
    config = KaleidoBertConfig(kpg="scale-fixed", visual_feature_size=D, **SIZES)
    assert config.patch_scheme == "grid-8" and config.pretext_tasks == ()
    assert KaleidoBertForPreTraining.patching(config) == Patching(get_scheme("grid-8"))  # the baselines' store
    full = KaleidoBertForPreTraining.patching(KaleidoBertConfig())
    assert full.scheme is KALEIDO and full.detector.name == "border-contrast"
    assert [view.name for view in full.views] == ["rotated", "grey"]
    # every AKPM variant reads the one training store, views included
    assert KaleidoBertForPreTraining.patching(KaleidoBertConfig(akpm="B")) == full
    assert kpg_patching("kaleido", "border-contrast", False).detector is None
    check_options("kaleido", {"kpg": "kaleido", "akpm": "B+V", "agm": "random"})
    for options, message in (
        ({"kpg": "kaleidoscope"}, "unknown kpg"),
        ({"akpm": "B+X"}, "bad akpm"),
        ({"agm": "guided"}, "unknown agm"),
        ({"itm_head": "tanh"}, "unknown itm_head"),
    ):
        with pytest.raises(KbenchError, match=message):
            KaleidoBertConfig(**options)
    assert MODELS.get("kaleido") is KaleidoBertForPreTraining


def test_every_loss_decreases_on_a_tiny_batch() -> None:
    model = tiny_model()
    batch, _ = collated(model)
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3)
    first = {k: v.item() for k, v in model(**batch).losses.items()}
    for _ in range(60):
        model(**batch).loss.backward()
        optimizer.step()
        optimizer.zero_grad()
    last = {k: v.item() for k, v in model(**batch).losses.items()}
    for name in first:
        assert last[name] < 0.7 * first[name], f"{name}: {first[name]:.4f} -> {last[name]:.4f}"


def test_a_variant_has_only_its_tasks_heads() -> None:
    model = tiny_model(akpm="B+I~III")
    assert model.config.kpg == "kaleido+sod" and model.g2cm_head is None and model.jps_head is not None


def test_patch_projections_follow_the_checkpoints_hidden_size() -> None:
    model = build_model("kaleido", str(minilm_checkpoint()), visual_feature_size=D)
    assert model.vl.patch_embeddings.feature_projections[0].out_features == 384


def test_a_pre_training_step_runs_under_bf16_autocast_on_a_cpu() -> None:
    """The ``paper`` profile's bf16 autocast, forced on a CPU (where kbench only uses it with native bf16): every
    loss is finite and gradients reach the encoder."""
    model = tiny_model()
    batch, _ = collated(model)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = model(**batch)
    assert all(torch.isfinite(loss) for loss in out.losses.values())
    out.loss.backward()
    grad = model.vl.encoder.layer[0].attention.self.query.weight.grad
    assert grad is not None and torch.isfinite(grad).all() and grad.abs().sum() > 0

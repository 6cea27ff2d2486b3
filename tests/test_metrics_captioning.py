"""caption_scores against pycocoevalcap's own scorers after its PTBTokenizer, on fashion-like captions."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
from pycocoevalcap.bleu.bleu import Bleu
from pycocoevalcap.cider.cider import Cider
from pycocoevalcap.meteor.meteor import Meteor
from pycocoevalcap.rouge.rouge import Rouge
from pycocoevalcap.tokenizer.ptbtokenizer import PTBTokenizer

from kbench.core.errors import KbenchError
from kbench.metrics import caption_scores, captioning
from kbench.metrics.captioning import EnglishMeteor, caption_scores_per_item, meteor_scorer

REFERENCES = {
    "p1": ["Long sleeve cotton T-shirt in black. Crewneck collar, logo printed at chest."],
    "p2": [
        "Slim-fit jeans in indigo denim, five-pocket styling, zip fly.",
        "Indigo stretch denim jeans with a slim fit and 3.5 cm belt loops.",
    ],
    "p3": ["Leather ankle boots in brown; round toe, stacked 4 cm heel."],
    3: [
        "Wool-blend coat in grey: notched lapel, double-breasted button closure!",
        "Grey double-breasted coat with notched lapels.",
        "Oversized coat in grey wool.",
    ],
    "p5": ["Silk scarf in red with paisley print."],
    "p6": ["Canvas tote bag in white\r\nwith leather handles."],  # the line-based tokenizer would split it
}
COLLAPSED = {i: [" ".join(r.split()) for r in refs] for i, refs in REFERENCES.items()}
CANDIDATES = {
    "p1": "long sleeve t-shirt in black with printed logo at chest",
    "p2": "Slim fit jeans in indigo denim. Five-pocket styling.",
    "p3": "Brown leather boots with round toe and 4 cm heel",
    3: "grey wool coat with notched lapel",
    "p5": "",  # an empty generation
    "p6": "...",  # nothing left after tokenisation
}
PERFECT_REFS = {i: refs[:1] for i, refs in REFERENCES.items()}
PERFECT = {i: refs[0] for i, refs in PERFECT_REFS.items()}


def library_scores(references: dict, candidates: dict) -> tuple[dict[str, float], dict[str, list[float]]]:
    """What COCOEvalCap.evaluate computes, less SPICE, x100: the corpus scores and each metric's per-image
    scores in the order of the ids."""
    tokenizer = PTBTokenizer()
    gts = tokenizer.tokenize({i: [{"caption": c} for c in refs] for i, refs in references.items()})
    res = tokenizer.tokenize({i: [{"caption": candidates[i]}] for i in references})
    bleu, meteor = Bleu(4).compute_score(gts, res, verbose=0), Meteor().compute_score(gts, res)
    rouge, cider = Rouge().compute_score(gts, res), Cider().compute_score(gts, res)
    corpus = {
        "BLEU-4": 100 * bleu[0][3],
        "METEOR": 100 * meteor[0],
        "ROUGE-L": 100 * rouge[0],
        "CIDEr": 100 * cider[0],
    }
    per_item = {
        "BLEU-4": [100 * x for x in bleu[1][3]],
        "METEOR": [100 * x for x in meteor[1]],
        "ROUGE-L": [100 * x for x in rouge[1]],
        "CIDEr": [100 * x for x in cider[1]],
    }
    assert list(gts) == list(references)  # the library's per-image lists follow the ids' order
    return corpus, per_item


@pytest.fixture(scope="module")
def runs() -> dict:
    """Calls of caption_scores and caption_scores_per_item sharing one METEOR process, the process before and
    after, and the library's own scores of the same case."""
    first = meteor_scorer()
    scores = caption_scores(REFERENCES, CANDIDATES)
    perfect = caption_scores(PERFECT_REFS, PERFECT)
    per_item = caption_scores_per_item(REFERENCES, CANDIDATES)
    library = library_scores(COLLAPSED, CANDIDATES)
    pid = first.meteor_p.pid
    return {"first": first, "pid": pid, "scores": scores, "perfect": perfect, "per_item": per_item, "library": library}


@pytest.mark.slow
def test_equals_pycocoevalcap(runs: dict) -> None:
    expected = runs["library"][0]
    assert runs["scores"] == pytest.approx(expected, rel=1e-12, abs=1e-12)
    assert all(v > 1 for v in expected.values())  # every metric sees matches, so equality is informative


@pytest.mark.slow
def test_per_item_scores_equal_pycocoevalcaps_per_image_output(runs: dict) -> None:
    corpus, per_item = runs["per_item"]
    expected = runs["library"][1]
    assert corpus == runs["scores"]  # the same scores as the corpus-only call
    assert list(per_item) == list(REFERENCES)
    for metric, values in expected.items():
        assert [per_item[i][metric] for i in REFERENCES] == pytest.approx(values, rel=1e-12, abs=1e-12)
    assert per_item["p5"] == {"BLEU-4": 0.0, "METEOR": 0.0, "ROUGE-L": 0.0, "CIDEr": 0.0}  # the empty caption
    assert all(per_item["p2"][m] > 1 for m in expected)  # the values are informative


@pytest.mark.slow
def test_per_item_rouge_and_cider_average_to_the_corpus_scores(runs: dict) -> None:
    corpus, per_item = runs["per_item"]
    for metric in ("ROUGE-L", "CIDEr"):
        mean = sum(scores[metric] for scores in per_item.values()) / len(per_item)
        assert mean == pytest.approx(corpus[metric], rel=1e-12)
    assert sum(s["BLEU-4"] for s in per_item.values()) / len(per_item) != pytest.approx(corpus["BLEU-4"])


@pytest.mark.slow
def test_perfect_candidates(runs: dict) -> None:
    expected = {"BLEU-4": 100, "METEOR": 100, "ROUGE-L": 100, "CIDEr": 1000}  # CIDEr-D: 10 per exact match
    assert runs["perfect"] == pytest.approx(expected, abs=1e-6)


@pytest.mark.slow
def test_meteor_process_is_reused(runs: dict) -> None:
    scorer = meteor_scorer()
    assert scorer is runs["first"] and scorer.meteor_p.pid == runs["pid"] and scorer.meteor_p.poll() is None
    assert scorer.meteor_cmd[:4] == ["java", "-Duser.language=en", "-Duser.country=US", "-jar"]


def test_a_failed_meteor_call_drops_the_scorer(monkeypatch: pytest.MonkeyPatch) -> None:
    class Broken:  # what a dead JVM looks like to the library: an empty line where a number should be
        meteor_p = SimpleNamespace(poll=lambda: None)
        closed = False

        def compute_score(self, gts: dict, res: dict) -> None:
            float(b"")

        def close(self) -> None:
            self.closed = True

    broken = Broken()
    monkeypatch.setattr(captioning, "_meteor", broken)
    with pytest.raises(RuntimeError, match="Java process failed"):
        captioning._meteor_score({}, {})
    assert broken.closed and captioning._meteor is None


@pytest.mark.slow
def test_meteor_ignores_a_non_english_jvm_locale(monkeypatch: pytest.MonkeyPatch) -> None:
    """Under a German default locale the library's own command fails; ours scores as in English."""
    gts = {1: ["a black leather jacket with zip"], 2: ["blue denim jeans slim fit"]}
    res = {1: ["a black jacket with a zip"], 2: ["blue jeans"]}
    english = meteor_scorer().compute_score(gts, res)[0]
    monkeypatch.setenv("JAVA_TOOL_OPTIONS", "-Duser.language=de -Duser.country=DE")
    german = EnglishMeteor()
    try:
        assert german.compute_score(gts, res)[0] == english
    finally:
        german.close()
    assert 0 < english < 1


@pytest.mark.parametrize(
    ("references", "candidates", "message"),
    [
        (
            {"a": ["x y"], "b": ["z"]},
            {"a": "x", "c": "z"},
            r"1 without a candidate \['b'\], 1 without references \['c'\]",
        ),
        ({}, {}, "no candidates"),
        ({"a": "a red dress"}, {"a": "a dress"}, "references of id 'a'"),
        ({"a": []}, {"a": "a dress"}, "references of id 'a'"),
        ({"a": ["  "]}, {"a": "a dress"}, "references of id 'a'"),
        ({"a": ["a red dress"]}, {"a": None}, "candidate of id 'a' must be a string"),
    ],
)
def test_bad_inputs_raise(references: dict, candidates: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        caption_scores(references, candidates)


def test_missing_java_is_a_kbench_error(monkeypatch: pytest.MonkeyPatch, tmp_path) -> None:
    monkeypatch.setenv("PATH", str(tmp_path))
    with pytest.raises(KbenchError, match="need a Java runtime"):
        caption_scores({"a": ["a red dress"]}, {"a": "a red dress"})


def test_tokenizing_is_silent_and_equals_ptbtokenizer(capfd: pytest.CaptureFixture) -> None:
    ours = captioning._tokenize(REFERENCES)
    assert capfd.readouterr().err == ""  # pycocoevalcap's prints "PTBTokenizer tokenized N tokens at ..." there
    library = {i: [{"caption": " ".join(c.split())} for c in caps] for i, caps in REFERENCES.items()}
    assert ours == PTBTokenizer().tokenize(library)

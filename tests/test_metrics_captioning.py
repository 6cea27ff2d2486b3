"""caption_scores against pycocoevalcap's own scorers after its PTBTokenizer, on fashion-like captions."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
from pycocoevalcap.bleu.bleu import Bleu
from pycocoevalcap.cider.cider import Cider
from pycocoevalcap.meteor.meteor import Meteor
from pycocoevalcap.rouge.rouge import Rouge
from pycocoevalcap.tokenizer.ptbtokenizer import PTBTokenizer

from kbench.errors import KbenchError
from kbench.metrics import caption_scores, captioning
from kbench.metrics.captioning import EnglishMeteor, meteor_scorer

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


def library_scores(references: dict, candidates: dict) -> dict[str, float]:
    """What COCOEvalCap.evaluate computes, less SPICE, x100."""
    tokenizer = PTBTokenizer()
    gts = tokenizer.tokenize({i: [{"caption": c} for c in refs] for i, refs in references.items()})
    res = tokenizer.tokenize({i: [{"caption": candidates[i]}] for i in references})
    return {
        "BLEU-4": 100 * Bleu(4).compute_score(gts, res, verbose=0)[0][3],
        "METEOR": 100 * Meteor().compute_score(gts, res)[0],
        "ROUGE-L": 100 * Rouge().compute_score(gts, res)[0],
        "CIDEr": 100 * Cider().compute_score(gts, res)[0],
    }


@pytest.fixture(scope="module")
def runs() -> dict:
    """Two calls of caption_scores sharing one METEOR process, and the process before and after."""
    first = meteor_scorer()
    scores = caption_scores(REFERENCES, CANDIDATES)
    perfect = caption_scores(PERFECT_REFS, PERFECT)
    return {"first": first, "pid": first.meteor_p.pid, "scores": scores, "perfect": perfect}


def test_equals_pycocoevalcap(runs: dict) -> None:
    expected = library_scores(COLLAPSED, CANDIDATES)
    assert runs["scores"] == pytest.approx(expected, rel=1e-12, abs=1e-12)
    assert all(v > 1 for v in expected.values())  # every metric sees matches, so equality is informative


def test_perfect_candidates(runs: dict) -> None:
    expected = {"BLEU-4": 100, "METEOR": 100, "ROUGE-L": 100, "CIDEr": 1000}  # CIDEr-D: 10 per exact match
    assert runs["perfect"] == pytest.approx(expected, abs=1e-6)


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

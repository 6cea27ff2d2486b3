"""Captioning scores (BLEU-4, METEOR, ROUGE-L, CIDEr) exactly as pycocoevalcap computes them, no SPICE."""

from __future__ import annotations

import atexit
import os
import shutil
import subprocess
import tempfile
import threading
from collections.abc import Hashable, Mapping, Sequence

from pycocoevalcap.bleu.bleu import Bleu
from pycocoevalcap.cider.cider import Cider
from pycocoevalcap.meteor import meteor as _meteor_module
from pycocoevalcap.rouge.rouge import Rouge
from pycocoevalcap.tokenizer import ptbtokenizer

from kbench.core.errors import KbenchError

CAPTION_SCORES = ("BLEU-4", "METEOR", "ROUGE-L", "CIDEr")  # the paper's captioning metrics, in its order


class EnglishMeteor(_meteor_module.Meteor):
    """pycocoevalcap's METEOR with the JVM in an English locale (the jar misparses numbers otherwise)."""

    def __init__(self) -> None:  # replaces the library's __init__ only to add the locale flags
        self.meteor_cmd = [
            "java",
            "-Duser.language=en",
            "-Duser.country=US",
            "-jar",
            "-Xmx2G",
            _meteor_module.METEOR_JAR,
            "-",
            "-",
            "-stdio",
            "-l",
            "en",
            "-norm",
        ]
        self.meteor_p = subprocess.Popen(
            self.meteor_cmd,
            cwd=os.path.dirname(os.path.abspath(_meteor_module.__file__)),
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,  # never read: a long-lived process must not block on a full pipe
        )
        self.lock = threading.Lock()

    def close(self) -> None:
        """Stop the JVM without taking the lock, which a failed ``compute_score`` leaves held."""
        if self.meteor_p.poll() is None:
            self.meteor_p.kill()
        self.meteor_p.wait()
        self.meteor_p.stdin.close()
        self.meteor_p.stdout.close()

    __del__ = close


_meteor: EnglishMeteor | None = None
_meteor_lock = threading.RLock()  # guards start-up, every call and the replacement of the shared scorer


def meteor_scorer() -> EnglishMeteor:
    """The one METEOR process of this Python process, started on first use (start-up takes 5-15 s)."""
    global _meteor
    with _meteor_lock:
        if _meteor is None or _meteor.meteor_p.poll() is not None:
            _require_java()
            _meteor = EnglishMeteor()
            atexit.register(_meteor.close)
        return _meteor


def _meteor_score(gts: dict, res: dict) -> tuple[float, list[float]]:
    """Corpus METEOR and the per-segment scores of the same call, on the shared scorer; one whose call failed or
    was interrupted is dropped, as its pipes are out of step and the library leaves its lock held."""
    global _meteor
    with _meteor_lock:
        scorer = meteor_scorer()
        try:
            corpus, per_item = scorer.compute_score(gts, res)
            return float(corpus), [float(x) for x in per_item]
        except BaseException as e:
            _meteor = None
            scorer.close()
            if isinstance(e, Exception):
                raise RuntimeError(f"METEOR's Java process failed ({e!r}); the next call restarts it") from e
            raise


def _require_java() -> None:
    if shutil.which("java") is None:
        raise KbenchError("captioning metrics (tokenizer, METEOR) need a Java runtime; `java` is not on PATH")


def _check(references: Mapping[Hashable, Sequence[str]], candidates: Mapping[Hashable, str]) -> None:
    """ValueError naming the first problem: ids that do not match, a missing or non-text caption."""
    if not candidates:
        raise ValueError("no candidates to score")
    missing = [i for i in references if i not in candidates]
    extra = [i for i in candidates if i not in references]
    if missing or extra:
        raise ValueError(
            f"ids of references and candidates differ: {len(missing)} without a candidate {missing[:5]}, "
            f"{len(extra)} without references {extra[:5]}"
        )
    for i, refs in references.items():
        if isinstance(refs, str) or not refs or not all(isinstance(r, str) and r.strip() for r in refs):
            raise ValueError(f"references of id {i!r} must be a non-empty list of non-blank strings")
        if not isinstance(candidates[i], str):
            raise ValueError(f"candidate of id {i!r} must be a string, got {type(candidates[i]).__name__}")


def _tokenize(captions: Mapping[Hashable, Sequence[str]]) -> dict[Hashable, list[str]]:
    """PTB-tokenise as ``COCOEvalCap.evaluate`` does (pycocoevalcap's ``PTBTokenizer``: the same jar, flags and
    punctuation removal) without its "PTBTokenizer tokenized N tokens" line on stderr; whitespace is collapsed
    first because the tokenizer is line-based and would misalign ids on a ``\\r`` or ``\\u2028`` inside a caption."""
    ids = [i for i, caps in captions.items() for _ in caps]
    sentences = "\n".join(" ".join(c.split()) for caps in captions.values() for c in caps)
    jar = os.path.join(os.path.dirname(ptbtokenizer.__file__), ptbtokenizer.STANFORD_CORENLP_3_4_1_JAR)
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "captions.txt")
        with open(path, "wb") as f:
            f.write(sentences.encode())
        command = ["java", "-cp", jar, "edu.stanford.nlp.process.PTBTokenizer", "-preserveLines", "-lowerCase", path]
        done = subprocess.run(command, capture_output=True, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"the PTB tokenizer failed: {done.stderr.decode(errors='replace').strip()[-500:]}")
    tokenized: dict[Hashable, list[str]] = {}
    for i, line in zip(ids, done.stdout.decode().split("\n"), strict=False):  # the output ends with a newline
        words = [w for w in line.rstrip().split(" ") if w not in ptbtokenizer.PUNCTUATIONS]
        tokenized.setdefault(i, []).append(" ".join(words))
    return tokenized


def caption_scores(
    references: Mapping[Hashable, Sequence[str]], candidates: Mapping[Hashable, str]
) -> dict[str, float]:
    """BLEU-4, METEOR, ROUGE-L and CIDEr (x100) of ``candidates`` against ``references``, all over the
    whole set at once (CIDEr's document frequencies come from every reference passed in).

    An empty candidate is scored as pycocoevalcap scores it (zero for that id), like one that is all
    punctuation and so empty after tokenisation.
    """
    return caption_scores_per_item(references, candidates)[0]


def caption_scores_per_item(
    references: Mapping[Hashable, Sequence[str]], candidates: Mapping[Hashable, str]
) -> tuple[dict[str, float], dict[Hashable, dict[str, float]]]:
    """The corpus scores of :func:`caption_scores` and, from the same tokenisation and scorer calls, each id's
    scores (x100) as pycocoevalcap computes them per image: BLEU-4's sentence score, METEOR's segment score,
    ROUGE-L and CIDEr (document frequencies from the whole set). The corpus ROUGE-L and CIDEr are the means of
    the per-item ones; corpus BLEU-4 and METEOR pool statistics over the set and are not."""
    _check(references, candidates)
    _require_java()
    gts = _tokenize(references)
    res = _tokenize({i: [candidates[i]] for i in references})
    bleu, bleu_items = Bleu(4).compute_score(gts, res, verbose=0)
    meteor, meteor_items = _meteor_score(gts, res)
    rouge, rouge_items = Rouge().compute_score(gts, res)
    cider, cider_items = Cider().compute_score(gts, res)
    corpus = {
        "BLEU-4": 100.0 * float(bleu[3]),
        "METEOR": 100.0 * meteor,
        "ROUGE-L": 100.0 * float(rouge),
        "CIDEr": 100.0 * float(cider),
    }
    columns = zip(bleu_items[3], meteor_items, rouge_items, cider_items, strict=True)
    per_item = {
        i: {"BLEU-4": 100.0 * float(b), "METEOR": 100.0 * m, "ROUGE-L": 100.0 * float(r), "CIDEr": 100.0 * float(c)}
        for i, (b, m, r, c) in zip(gts, columns, strict=True)  # every scorer walks the ids in gts's order
    }
    return corpus, per_item

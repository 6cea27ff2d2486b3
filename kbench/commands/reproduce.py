"""``kbench reproduce``: rerun the committed reference study and compare every metric with its reference results.

The study is the smoke profile of the main table (every zoo entry) and the AGM block
of Table 4, run into a fresh tracking store. On a CPU the whole computation is seeded and deterministic, so the
default tolerance is a rounding-level one; ``--update`` rewrites the reference for a change meant to move results.
Trials run with their kernels pinned to AVX2 code paths (``PINNED_ISA``), so that x86 machines with wider vector
units (AVX-512) round exactly as those without do.

The study keeps its caches (SynthFashion, feature stores, AAG grids, checkpoints, Tune's state) under a cache root of
its own, ``<KBENCH_HOME>/reproduce/<digest of the pinned settings in effect>``, never shared with ordinary runs: a
run without the pinning computes the same cache keys from different numbers (same-key checkpoints differ by about
3e-7, CLIP's by 3e-4), and the study reading those would move its retrieval metrics by a rank. Putting the numeric
settings into every cache key instead would touch every cache and name every setting that changes results (kernel
ISA, threads, library versions...); a separate root holds, by construction, only what was computed under the
study's settings, at the price of computing the smoke-sized caches once more.

CLIP's larger difference is an amplification, not a nondeterminism: its smoke pre-training never leaves chance (loss
ln 16, embeddings within 1% of their batch mean), so its gradient is a small difference of nearly equal terms and is
only accurate to about 1e-4 in float32 (against float64), where FashionBERT's is to 3e-7. A weight differing in its
last bit after one step gives a step-2 gradient 1e-4 away; Adam's update, about ``lr`` per element whatever the
gradient's size, turns that into weight differences of about 1e-5 on the same features (8e-5 where the first
gradient already differs), which then stay flat rather than grow. Nothing in its loss is discontinuous or breaks ties.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import tempfile
from collections.abc import Iterator
from importlib import resources
from pathlib import Path

import pandas as pd
from tabulate import tabulate

from kbench.api import ablate, evaluate
from kbench.core.config import digest
from kbench.core.errors import KbenchError
from kbench.core.paths import atomic_path, kbench_home
from kbench.report.tables import load_runs

EXPERIMENT = "reproduce"
MODELS = "all"
BLOCK = "agm"
PROFILE = "smoke"
TOLERANCE = 1e-6  # relative, against max(1, |reference|)
# CLIP's smoke entry, at chance (above), moves by a prediction between CPU models even with pinned kernels: cr's
# macro-F by 2.3e-4 and SumCLS by 0.023 on a Xeon of model 207 against the machine that wrote the reference.
LOOSER = {"clip": 1e-3}
# results/reference/ of the checkout, installed as kbench.reference.
REFERENCE = Path(str(resources.files("kbench.reference").joinpath(f"{PROFILE}.json")))

Results = dict[str, dict[str, float]]  # trial label -> metric -> value

# Read by torch's kernel dispatch, MKL and oneDNN when a trial's process starts (Ray workers inherit them).
PINNED_ISA = {"ATEN_CPU_CAPABILITY": "avx2", "MKL_CBWR": "AVX2", "ONEDNN_MAX_CPU_ISA": "AVX2"}


@contextlib.contextmanager
def study_environment() -> Iterator[Path]:
    """For the block, restored afterwards: ``PINNED_ISA`` in the environment (where not set already) and
    ``KBENCH_HOME`` set to the study's own cache root for those settings, which is yielded."""
    saved = dict(os.environ)
    os.environ.update({k: v for k, v in PINNED_ISA.items() if k not in os.environ})
    home = study_home()
    os.environ["KBENCH_HOME"] = str(home)
    try:
        yield home
    finally:
        os.environ.clear()
        os.environ.update(saved)


def study_home() -> Path:
    """The study's cache root under ``KBENCH_HOME``, named after the pinning settings in the environment now."""
    return kbench_home() / EXPERIMENT / digest({key: os.environ.get(key) for key in PINNED_ISA})


def run_study(uri: str) -> Results:
    """Run the study into the tracking store ``uri`` and return its results."""
    common = {"profile": PROFILE, "tracking_uri": uri, "experiment": EXPERIMENT}
    evaluate(MODELS, "all", **common)
    ablate(BLOCK, **common)
    return collect(uri)


def collect(uri: str) -> Results:
    """Every finished trial's metrics, apart from wall-clock times and memory peaks."""
    runs = load_runs(uri, EXPERIMENT)
    out: Results = {}
    for _, row in runs.iterrows():
        label = f"{row['model']}/{row['variant']}/seed{row['seed']}"
        metrics = {k: float(v) for k, v in row.items() if "/" in str(k) and not str(k).startswith(("time/", "mem/"))}
        out[label] = {k: v for k, v in sorted(metrics.items()) if not math.isnan(v)}
    return dict(sorted(out.items()))


def differences(
    reference: Results, current: Results, tolerance: float, looser: dict[str, float] = LOOSER
) -> pd.DataFrame:
    """The (trial, metric) pairs that moved beyond ``tolerance`` (or the ``looser`` one of their model), appeared or
    disappeared."""
    rows = []
    for trial in sorted(set(reference) | set(current)):
        ref, cur = reference.get(trial, {}), current.get(trial, {})
        limit = max(tolerance, looser.get(trial.split("/")[0], 0.0))
        for metric in sorted(set(ref) | set(cur)):
            a, b = ref.get(metric), cur.get(metric)
            if a is None or b is None or abs(a - b) > limit * max(1.0, abs(a)):
                rows.append({"trial": trial, "metric": metric, "reference": a, "now": b})
    return pd.DataFrame(rows, columns=["trial", "metric", "reference", "now"])


def reproduce(update: bool, reference: Path = REFERENCE, tolerance: float = TOLERANCE) -> tuple[int, str]:
    """Rerun the study; with ``update`` rewrite ``reference``, else compare with it. ``(exit status, report)``."""
    if not update and not reference.is_file():
        raise KbenchError(f"no reference results at {reference}; `kbench reproduce --update` writes them")
    with tempfile.TemporaryDirectory(prefix="kbench-reproduce-") as tmp, study_environment():
        current = run_study(f"sqlite:///{Path(tmp) / 'mlflow.db'}")
    count = sum(len(m) for m in current.values())
    if update:
        reference.parent.mkdir(parents=True, exist_ok=True)
        with atomic_path(reference) as path:
            path.write_text(json.dumps(current, indent=1) + "\n")
        return 0, f"wrote {count} metrics of {len(current)} trials to {reference}"
    moved = differences(json.loads(reference.read_text()), current, tolerance)
    limits = f"tolerance {tolerance:g}" + "".join(f"; {m} {t:g}" for m, t in LOOSER.items())
    if moved.empty:
        return 0, f"reproduced: {count} metrics of {len(current)} trials match {reference} ({limits})"
    table = tabulate(moved, headers="keys", tablefmt="github", showindex=False, floatfmt=".6g", missingval="–")
    return 1, f"{len(moved)} of {count} metrics moved beyond {limits}:\n\n{table}"

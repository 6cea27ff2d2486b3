"""Confusion matrices as heatmap images, logged beside their CSVs so the MLflow UI shows them without scrolling."""

from __future__ import annotations

import io

import numpy as np
import pandas as pd
from matplotlib.figure import Figure

ANNOTATED_LABELS = 20  # up to this many labels, each cell also prints its count


def confusion_figure(csv_text: str, title: str) -> Figure:
    """The confusion matrix a classification task logs as CSV (rows: true labels, columns: predictions), coloured by
    the share of each true label's examples, so rare and frequent labels read alike."""
    matrix = pd.read_csv(io.StringIO(csv_text), index_col=0)
    counts = matrix.to_numpy(dtype=float)
    totals = counts.sum(axis=1, keepdims=True)
    shares = np.divide(counts, totals, out=np.zeros_like(counts), where=totals > 0)
    rows, cols = counts.shape
    side = max(5.0, 0.28 * max(rows, cols) + 2.5)
    fontsize = 8 if max(rows, cols) <= 40 else 6
    figure = Figure(figsize=(side + 1.2, side))
    axes = figure.add_subplot()
    image = axes.imshow(shares, cmap="Blues", vmin=0.0, vmax=1.0, aspect="equal", interpolation="nearest")
    axes.set_xticks(range(cols), [str(c) for c in matrix.columns], rotation=90, fontsize=fontsize)
    axes.set_yticks(range(rows), [str(r) for r in matrix.index], fontsize=fontsize)
    axes.set_xlabel("predicted label")
    axes.set_ylabel("true label")
    axes.set_title(f"{title} (n = {int(counts.sum())})")
    if max(rows, cols) <= ANNOTATED_LABELS:
        for (i, j), count in np.ndenumerate(counts):
            if count:
                colour = "white" if shares[i, j] > 0.5 else "black"
                axes.text(j, i, f"{int(count)}", ha="center", va="center", fontsize=fontsize, color=colour)
    bar = figure.colorbar(image, ax=axes, fraction=0.046, pad=0.02)
    bar.set_label("share of the true label's examples")
    return figure

"""Results read back from MLflow: like-with-like selection, tables, paired comparisons, plots."""

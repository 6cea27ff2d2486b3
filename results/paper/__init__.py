"""The published numbers of the Kaleido-BERT paper, Tables 2-4 (installed as ``kbench.published``)."""

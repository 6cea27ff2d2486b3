"""Zoo entries other than Kaleido-BERT: the baselines of the paper's tables, one file each."""

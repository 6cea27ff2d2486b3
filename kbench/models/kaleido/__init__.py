"""Kaleido-BERT (Zhuge et al., CVPR 2021): KPG, AAG, AGM, AKPM and the model, one module per concept."""

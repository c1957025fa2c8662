"""Training data: section-tagged bins from tools/preprocess.py → padded or packed samples → per-rank batches."""

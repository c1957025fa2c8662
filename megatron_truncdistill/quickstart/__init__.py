"""The CPU quickstart: a seeded reasoning corpus, a tiny tokenizer, and the LSP 1.0 vs 0.5 distillation study."""

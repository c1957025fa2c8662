"""Greedy generation with a megatron-core model and exact-match scoring of final answers."""

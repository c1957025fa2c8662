"""Checkpoints: megatron-core dist_checkpointing I/O (atomic, resharding) and the trainer's resumable state."""

"""Every checkpoint layout: dist_checkpointing I/O (atomic, resharding), model checkpoints (converter and trainer
alike), the optimizer's sharded state, and the trainer's resumable state. See README.md beside this file."""

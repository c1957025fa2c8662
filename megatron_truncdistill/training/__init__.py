"""The training loop and its parts: DDP/optimizer setup, the pipelined step, metrics."""

"""Process-level runtime: make megatron-core run on CPU ranks (gloo) when CUDA is absent."""

from megatron_truncdistill.runtime.cpu import enable_cpu_runtime

__all__ = ["enable_cpu_runtime"]

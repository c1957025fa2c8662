"""Process-level runtime: make megatron-core run on CPU ranks (gloo) when CUDA is absent."""

from megatron_truncdistill.runtime.cpu import SUPPORTED_MCORE, cpu_runtime_active, enable_cpu_runtime

__all__ = ["SUPPORTED_MCORE", "cpu_runtime_active", "enable_cpu_runtime"]

"""Process-level runtime: make megatron-core run on CPU ranks (gloo) when CUDA is absent, and the CPU check that
tells host from device memory (``device_check``)."""

from megatron_truncdistill.runtime.cpu import enable_cpu_runtime
from megatron_truncdistill.runtime.device_check import DeviceMixError, device_check_active, is_device_tensor

__all__ = ["DeviceMixError", "device_check_active", "enable_cpu_runtime", "is_device_tensor"]

"""Import the megatron-core modules every rank needs, once, in a parent that forks ranks (tests, quickstart).

Importing them costs ~10 s of CPU; a forked rank inherits them for free. Also silences megatron-core's import-time
warnings about missing Transformer Engine / apex, which are expected on CPU and would repeat once per rank.
"""

import warnings

with warnings.catch_warnings():
    warnings.filterwarnings("ignore", message=".*Transformer Engine and Apex are not installed.*")
    warnings.filterwarnings("ignore", message=".*apex.*")
    import megatron.core.dist_checkpointing  # noqa: F401
    import megatron.core.distributed  # noqa: F401
    import megatron.core.models.gpt  # noqa: F401
    import megatron.core.optimizer  # noqa: F401
    import megatron.core.pipeline_parallel  # noqa: F401
    import megatron.core.tensor_parallel  # noqa: F401

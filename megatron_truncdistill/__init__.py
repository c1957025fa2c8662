"""megatron-truncdistill: distill a reasoning teacher into a smaller student on lead-span-truncated traces.

Layers, bottom to top (a module imports only from layers below it):
  sections, config, math_answers        pure Python
  runtime, losses, data.indexed         torch / megatron-core building blocks
  data, models, checkpoint              datasets, model builder, HF conversion
  training, train, quickstart           the loop and entry points
"""

__version__ = "0.1.0"

# megatron-truncdistill on the NGC PyTorch container, which ships CUDA, NCCL, Transformer Engine and apex.
#   docker build -t truncdistill .
#   docker run --gpus all --ipc=host -v $PWD:/workspace/run truncdistill \
#       torchrun --standalone --nproc-per-node 8 -m megatron_truncdistill.train --config /workspace/run/run.yaml
FROM nvcr.io/nvidia/pytorch:25.04-py3

WORKDIR /opt/megatron-truncdistill
COPY pyproject.toml README.md ./
COPY megatron_truncdistill ./megatron_truncdistill
COPY tools ./tools
COPY examples ./examples
# The container's torch, Transformer Engine and apex stay as they are: the constraints keep pip from replacing
# torch, and megatron-core is pinned to the release this project supports.
RUN pip freeze | grep -E '^(torch|transformer.engine)' > /tmp/container-pins.txt && \
    pip install --no-cache-dir -c /tmp/container-pins.txt "megatron-core>=0.16.1,<0.18" -e . && \
    python -c "import megatron_truncdistill, transformer_engine, megatron.core; print('ok', megatron.core.__version__)"
ENV CUDA_DEVICE_MAX_CONNECTIONS=1

#!/usr/bin/env bash
# Bins for examples/tiny_cpu.yaml from the committed tiny corpus (LSP 1.0 and the paper's LSP 0.5).
set -euo pipefail
cd "$(dirname "$0")"
for lsp in 1.0 0.5; do
  python ../tools/preprocess.py --input data/tiny_reasoning.jsonl --output-prefix "data/tiny_lsp${lsp}" \
    --tokenizer tokenizer --lsp "$lsp" --workers 1 --overwrite
done

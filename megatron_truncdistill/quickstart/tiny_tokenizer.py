"""A character-level Hugging Face tokenizer with a ChatML template and ``<think>`` markers, for CPU-sized models.

The real Qwen3 vocabulary (151,669 ids) would make a tiny CPU model's output layer dominate everything; one id
per printable ASCII character keeps the vocabulary at ~100 rows while exercising exactly the same code paths
(tokenizer.json + tokenizer_config.json with a chat template, offset mapping, special thinking markers).
"""

from __future__ import annotations

import json
from pathlib import Path

from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers

from megatron_truncdistill.tokenization import CHATML_TEMPLATE

SPECIAL_TOKENS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<think>", "</think>"]


def build_tiny_tokenizer(directory: str | Path) -> Path:
    """Write tokenizer.json and tokenizer_config.json into ``directory`` (deterministic bytes)."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    chars = ["<unk>", "\n"] + [chr(i) for i in range(32, 127)]
    tokenizer = Tokenizer(models.WordLevel({c: i for i, c in enumerate(chars)}, unk_token="<unk>"))
    tokenizer.pre_tokenizer = pre_tokenizers.Split(Regex(r"[\s\S]"), "isolated")  # one piece per character
    tokenizer.decoder = decoders.Fuse()
    tokenizer.add_special_tokens(SPECIAL_TOKENS)
    tokenizer.save(str(directory / "tokenizer.json"))
    config = {"tokenizer_class": "PreTrainedTokenizerFast", "chat_template": CHATML_TEMPLATE,
              "eos_token": "<|im_end|>", "pad_token": "<|endoftext|>", "bos_token": None,
              "unk_token": "<unk>", "model_max_length": 4096}
    (directory / "tokenizer_config.json").write_text(json.dumps(config, indent=2) + "\n")
    return directory

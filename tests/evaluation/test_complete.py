"""``evaluate.py complete``: one greedy completion equals transformers' own greedy decoding of the chat prompt."""

from __future__ import annotations

import torch

from megatron_truncdistill.evaluation.cli import main


def test_greedy_completion_equals_transformers_generate(tiny_qwen3_dir, capsys):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    prompt = "What is 2 + 2?"
    assert main(["complete", "--model", str(tiny_qwen3_dir), "--prompt", prompt, "--max-new-tokens", "6",
                 "--device", "cpu"]) == 0
    printed = capsys.readouterr().out
    tok = AutoTokenizer.from_pretrained(tiny_qwen3_dir)
    text = tok.apply_chat_template([{"role": "user", "content": prompt}], tokenize=False,
                                   add_generation_prompt=True, enable_thinking=True)
    ids = torch.tensor([tok(text, add_special_tokens=False)["input_ids"]])
    model = AutoModelForCausalLM.from_pretrained(tiny_qwen3_dir).eval()
    out = model.generate(ids, max_new_tokens=6, do_sample=False, eos_token_id=tok.eos_token_id,
                         pad_token_id=tok.eos_token_id)
    new = out[0, ids.shape[1]:].tolist()
    new = new[:new.index(tok.eos_token_id)] if tok.eos_token_id in new else new
    assert len(new) == 6 and printed == tok.decode(new, skip_special_tokens=False) + "\n"


def test_missing_model_is_one_line(tmp_path, capsys):
    assert main(["complete", "--model", str(tmp_path / "nope"), "--prompt", "hi"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [f"error: --model {tmp_path / 'nope'}: not found (a HF model directory or a checkpoint)"]

"""Budget forcing appends the closing text exactly once, only where thinking was not closed, and reads the answer."""

import pytest

from megatron_truncdistill.evaluation import budget_forcing, exact_match
from megatron_truncdistill.evaluation.budget_forcing import FORCE_TEXT, budget_force, needs_forcing
from megatron_truncdistill.quickstart.tiny_tokenizer import build_tiny_tokenizer
from megatron_truncdistill.tokenization import load_tokenizer


@pytest.fixture(scope="module")
def tok(tmp_path_factory):
    return load_tokenizer(build_tiny_tokenizer(tmp_path_factory.mktemp("tok")))


def _ids(tok, text):
    return tok.encode_batch([text])[0].ids.tolist()


class FakeGreedy:
    """Stands in for ``greedy_generate``: a fixed continuation per call, and a record of the contexts it saw."""

    def __init__(self, tok, *continuations):
        self.tok, self.continuations, self.calls = tok, list(continuations), []

    def __call__(self, model, prompts, *, max_new_tokens, stop_ids, vocab_size):
        self.calls.append(prompts)
        text = self.continuations.pop(0)
        return [_ids(self.tok, t if isinstance(t, str) else t(p))[:max_new_tokens]
                for t, p in zip(text, prompts)]


def test_needs_forcing():
    assert needs_forcing("<think>\n1+2+0=3") and needs_forcing("")
    assert not needs_forcing("<think>\nx\n</think>\n\nAnswer: 3")


def test_forces_only_unclosed_generations_once(tok, monkeypatch):
    fake = FakeGreedy(tok, ["42<|im_end|>"])
    monkeypatch.setattr(budget_forcing, "greedy_generate", fake)
    prompts = [_ids(tok, "p1"), _ids(tok, "p2")]
    gens = [_ids(tok, "<think>\n7+8+0=15, write"), _ids(tok, "<think>\nok\n</think>\n\nAnswer: 5")]
    out = budget_force(None, tok, prompts, gens, stop_ids={tok.eos_id})
    assert out.forced == [True, False]
    assert len(fake.calls) == 1 and fake.calls[0] == [prompts[0] + gens[0] + _ids(tok, FORCE_TEXT)]
    forced_text = tok.decode(out.generations[0])
    assert forced_text.count("</think>") == 1 and forced_text.count("Answer: ") == 1
    assert forced_text == "<think>\n7+8+0=15, write" + FORCE_TEXT + "42<|im_end|>"
    assert exact_match.answer_line(forced_text) == "42"
    assert out.generations[1] == gens[1], "a closed generation is never touched"


def test_nothing_to_force_runs_no_generation(tok, monkeypatch):
    fake = FakeGreedy(tok)
    monkeypatch.setattr(budget_forcing, "greedy_generate", fake)
    gens = [_ids(tok, "</think>\n\nAnswer: 1")]
    assert budget_force(None, tok, [[1]], gens, stop_ids=set()).forced == [False] and not fake.calls


def test_evaluate_exact_match_with_budget_forcing(tok, monkeypatch):
    records = [{"prompt": "What is 7+8?", "answer": "15"}, {"prompt": "What is 1+2?", "answer": "3"},
               {"prompt": "What is 2+2?", "answer": "4"}]
    # 1st: thinks past the budget, forced answer right; 2nd: closes itself, right; 3rd: forced answer wrong.
    monkeypatch.setattr(exact_match, "greedy_generate", FakeGreedy(
        tok, ["<think>\n7+8+0=15", "<think>\n</think>\n\nAnswer: 3", "<think>\n2+2"]))
    monkeypatch.setattr(budget_forcing, "greedy_generate", FakeGreedy(tok, ["15", "5"]))
    res = exact_match.evaluate_exact_match(None, tok, records, budget_forcing=True)
    assert (res.correct, res.correct_unforced, res.forced, res.answered) == (2, 1, 2, 3)
    monkeypatch.setattr(exact_match, "greedy_generate", FakeGreedy(
        tok, ["<think>\n7+8+0=15", "<think>\n</think>\n\nAnswer: 3", "<think>\n2+2"]))
    plain = exact_match.evaluate_exact_match(None, tok, records)
    assert (plain.correct, plain.forced, plain.correct_unforced) == (1, 0, None)

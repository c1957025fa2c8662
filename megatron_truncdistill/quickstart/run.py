"""``make quickstart``: the paper's LSP 1.0 vs 0.5 distillation study, in miniature, on CPU ranks.

1. generate a seeded reasoning corpus (prompt / <think> CoT </think> / answer) with a held-out test split, and a
   disjoint corpus of easier problems for the base student;
2. preprocess them with the real pipeline (the study corpus at LSP 1.0 and LSP 0.5);
3. train a small teacher on the full traces and a *base* student (cached by their settings), then distill the
   student from the teacher at LSP 1.0 and 0.5, starting from the base, with the real trainer under torchrun on
   2 CPU ranks (tensor parallel);
4. evaluate teacher, base and students by greedy generation on the held-out problems (exact match), with budget
   forcing;
5. write results.md / results.json / results.png, with the planner's predictions beside the measurements.

The base stage mirrors the paper, whose student is a pretrained base model (Qwen3-4B-Base) that already knows how
to finish an answer but has not learned long reasoning. Here the student architecture is trained briefly in
student-only mode (no teacher, cross-entropy on COT+ANSWER) on full traces of ``corpus.EASY_TASKS``: one-digit
additions, equations with a = 1, single cm -> mm conversions. It learns the trace format (``</think>`` then
``Answer: N``) and one-step facts, but no prompt of the study's families (multi-digit carries, division by
a >= 2, multi-hop or x1000 conversions). Without it a student distilled at LSP 0.5 starts from random weights and
never sees a trace's tail, so it can never answer at all.

Evaluation protocol (every model alike): greedy decoding with a thinking budget of ``eval_budget`` new tokens
(above the longest training trace); a generation that has not closed its thinking by then, or stopped without
closing it, gets ``\n</think>\n\nAnswer: `` appended once and the number is read greedily (s1's budget forcing,
Muennighoff et al. 2025). The report gives the accuracy without forcing and the forced fraction beside it.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import shutil
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

from megatron_truncdistill import experiments
from megatron_truncdistill.checkpoint.train_state import resolve_checkpoint
from megatron_truncdistill.evaluation.exact_match import answer_line
from megatron_truncdistill.quickstart.corpus import EASY_TASKS, generate, split_train_test, write_jsonl
from megatron_truncdistill.quickstart.tiny_tokenizer import build_tiny_tokenizer

TEACHER_ARCH = {"model_type": "qwen3", "architectures": ["Qwen3ForCausalLM"], "num_hidden_layers": 4,
                "hidden_size": 128, "intermediate_size": 384, "num_attention_heads": 4, "num_key_value_heads": 2,
                "head_dim": 32, "vocab_size": 128, "max_position_embeddings": 512, "rms_norm_eps": 1e-6,
                "rope_theta": 10000.0, "tie_word_embeddings": True, "initializer_range": 0.02}
STUDENT_ARCH = dict(TEACHER_ARCH, num_hidden_layers=2, hidden_size=96, intermediate_size=256, head_dim=24)


@dataclass
class QuickstartSettings:
    out_dir: str = "quickstart_out"
    seed: int = 0
    train_records: int = 6000
    test_records: int = 150
    base_records: int = 3000
    teacher_steps: int = 1000
    base_steps: int = 200
    student_steps: int = 300
    eval_budget: int = 128
    """Thinking budget in new tokens (longest training trace: 115 with its end token); then budget forcing."""
    global_batch_size: int = 16
    micro_batch_size: int = 8
    lr: float = 5e-3
    """Teacher and base learning rate (from scratch)."""
    student_lr: float = 5e-3
    """Distillation learning rate. 1e-3 was tried to protect what the base knows: LSP 1.0 fell from 0.167 to
    0.107 and LSP 0.5 stayed at 0.007 (same teacher and base, loaded 2-core machine)."""
    ranks: int = 2
    lsps: tuple[str, ...] = ("1.0", "0.5")
    teacher_arch: dict = field(default_factory=lambda: dict(TEACHER_ARCH))
    student_arch: dict = field(default_factory=lambda: dict(STUDENT_ARCH))


def log(message: str) -> None:
    experiments.log(message, tag="quickstart")


def make_corpus(s: QuickstartSettings, out: Path) -> tuple[Path, Path, list[dict]]:
    """The study's train/test split and the base student's easier corpus (a different seed and family set)."""
    train, test = split_train_test(generate(s.train_records + s.test_records, seed=s.seed),
                                   test_size=s.test_records)
    write_jsonl(test, out / "data" / "test.jsonl")
    base = write_jsonl(generate(s.base_records, seed=s.seed + 1, tasks=EASY_TASKS), out / "data" / "base.jsonl")
    return write_jsonl(train, out / "data" / "train.jsonl"), base, test


def run_config(s: QuickstartSettings, *, prefix: Path, tokenizer: Path, run_dir: Path, arch: dict,
               steps: int, teacher_ckpt: str | None, student_load: str | None = None) -> dict:
    """The trainer YAML of one run: teacher and base training are the student-only mode (no teacher, CE on
    COT+ANSWER); a distilled student starts from ``student_load`` (the base checkpoint's iteration directory)."""
    lr = s.student_lr if teacher_ckpt else s.lr
    distill = ({"kd_weight": 0.5, "divergence": "forward_kl", "temperature": 1.0,
                "loss_sections": ["PROMPT", "COT", "ANSWER"]} if teacher_ckpt else
               {"kd_weight": 0.0, "loss_sections": ["COT", "ANSWER"]})
    return {
        "data": {"prefixes": [str(prefix)], "tokenizer": str(tokenizer), "seq_length": 0, "valid_fraction": 0.0},
        "student": {"architecture": arch, **({"load": student_load} if student_load else {})},
        "teacher": {"load": teacher_ckpt} if teacher_ckpt else None,
        "parallel": {"tensor_model_parallel_size": s.ranks if teacher_ckpt else 1},
        "distill": distill,
        "train": {"train_steps": steps, "micro_batch_size": s.micro_batch_size, "global_batch_size":
                  s.global_batch_size, "seed": s.seed},
        "optimizer": {"lr": lr, "min_lr": lr / 10, "warmup_fraction": 0.05, "weight_decay": 0.01},
        "logging": {"run_dir": str(run_dir), "tensorboard": True},
    }


def _hash(payload: dict) -> str:
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()[:12]


def train_cached(s: QuickstartSettings, out: Path, *, name: str, prefix: Path, tokenizer: Path, corpus_sha: str,
                 arch: dict, steps: int) -> Path:
    """Train ``name`` (teacher or base) student-only, once per (corpus, settings); later runs reuse the checkpoint."""
    key = _hash({"corpus": corpus_sha, "arch": arch, "steps": steps, "lr": s.lr,
                 "gbs": s.global_batch_size, "seed": s.seed})
    run_dir = out / "cache" / f"{name}-{key}"
    latest = run_dir / "checkpoints" / "latest"
    if latest.is_file():
        log(f"reusing cached {name} {run_dir}")
        return run_dir
    config = run_config(s, prefix=prefix, tokenizer=tokenizer, run_dir=run_dir, arch=arch, steps=steps,
                        teacher_ckpt=None)
    config["parallel"] = {"tensor_model_parallel_size": 1}  # data parallel over the ranks: fastest for a tiny model
    experiments.launch_trainer(config, path=out / "configs" / f"{name}.yaml", ranks=s.ranks, tag="quickstart")
    return run_dir


def predicted_vs_measured(s: QuickstartSettings, prefixes: dict, costs: dict) -> str:
    """The planner on the LSP 1.0 bins against what the two student runs measured, per optimizer step."""
    import numpy as np
    from megatron.core.datasets.indexed_dataset import IndexedDataset

    from megatron_truncdistill.flops import DecoderShape
    from megatron_truncdistill.planning import Layout, predict

    dataset = IndexedDataset(str(prefixes["1.0"]) + "_tokens")
    lengths = np.array(dataset.sequence_lengths, dtype=np.int64)
    rows = predict(lengths, DecoderShape.from_hf(s.student_arch), DecoderShape.from_hf(s.teacher_arch),
                   Layout(tensor_model_parallel_size=s.ranks), lsps=tuple(float(l) for l in s.lsps))
    by_lsp = {f"{r.lsp:.1f}": r for r in rows}
    base_pred, base = by_lsp["1.0"], costs["1.0"]
    gbs, n = s.global_batch_size, len(lengths)
    lines = ["| LSP | tokens/step predicted | measured | FLOPs ratio vs 1.0 predicted (packed) | measured (padded) "
             "| step time predicted from LSP 1.0 (s) | measured (s) |", "|---|---|---|---|---|---|---|"]
    for lsp in s.lsps:
        p, c = by_lsp[f"{float(lsp):.1f}"], costs[lsp]
        flops_ratio = (p.student_train_flops + p.teacher_forward_flops) / (
            base_pred.student_train_flops + base_pred.teacher_forward_flops)
        lines.append(f"| {lsp} | {p.tokens / n * gbs:.0f} | {c['input_tokens'] / c['steps']:.0f} | "
                     f"{flops_ratio:.2f} | {c['flops_per_device'] / base['flops_per_device']:.2f} | "
                     f"{base['mean_step_time_s'] * flops_ratio:.3f} | {c['mean_step_time_s']:.3f} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    from megatron_truncdistill.quickstart import report

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out-dir", default=QuickstartSettings.out_dir)
    for key in ("teacher_steps", "base_steps", "student_steps", "train_records", "test_records", "eval_budget"):
        parser.add_argument("--" + key.replace("_", "-"), type=int, default=getattr(QuickstartSettings, key))
    args = vars(parser.parse_args(argv))
    s = QuickstartSettings(**args)
    out = Path(s.out_dir).resolve()
    (out / "configs").mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    log(f"1/5 corpus: {s.train_records} generated problems, {s.test_records} held out, "
        f"{s.base_records} easier ones for the base student")
    corpus, base_corpus, test = make_corpus(s, out)
    tokenizer = build_tiny_tokenizer(out / "tokenizer")
    log("2/5 preprocess at LSP " + " and ".join(s.lsps) + " (and the base corpus at LSP 1.0)")
    prefixes = {lsp: out / "bins" / f"train_lsp{lsp}" for lsp in s.lsps}
    manifests = {lsp: experiments.preprocess_corpus([str(corpus)], tokenizer=str(tokenizer), prefix=prefixes[lsp],
                                                    lsp=lsp) for lsp in s.lsps}
    base_manifest = experiments.preprocess_corpus([str(base_corpus)], tokenizer=str(tokenizer),
                                                  prefix=out / "bins" / "base_lsp1.0", lsp="1.0")
    runs = train_all(s, out, prefixes=prefixes, tokenizer=tokenizer,
                     corpus_sha=manifests[s.lsps[0]]["inputs"][0]["files"][0]["sha256"],
                     base_sha=base_manifest["inputs"][0]["files"][0]["sha256"])
    log(f"4/5 greedy evaluation on the held-out problems (thinking budget {s.eval_budget} tokens, budget forcing)")
    accuracy = experiments.evaluate_checkpoints({name: d / "checkpoints" for name, d in runs.items()},
                                                tokenizer=tokenizer, records=test, extract=answer_line,
                                                group_key="task", max_new_tokens=s.eval_budget,
                                                budget_forcing=True, tag="quickstart")
    log("5/5 report")
    costs = {name: experiments.run_costs(run_dir / "metrics.jsonl") for name, run_dir in runs.items()}
    results = {name: {"lsp": name.split("lsp")[1] if "lsp" in name else "1.0", **accuracy[name],
                      "costs": costs[name]} for name in runs}
    rows = report.build_rows(results)
    predicted = predicted_vs_measured(s, prefixes, {lsp: costs[f"student_lsp{lsp}"] for lsp in s.lsps})
    text = report.markdown(rows, predicted=predicted, machine=report.machine_name(), eval_budget=s.eval_budget)
    (out / "results.md").write_text(text)
    (out / "results.json").write_text(json.dumps({"settings": asdict(s), "rows": rows, "costs": costs,
                                                  "wall_s": time.perf_counter() - start}, indent=2, default=str))
    report.plot(rows, out / "results.png")
    print("\n" + text)
    log(f"done in {time.perf_counter() - start:.0f}s: {out / 'results.md'}, results.json, results.png")
    return 0


def train_all(s: QuickstartSettings, out: Path, *, prefixes: dict, tokenizer: Path, corpus_sha: str,
              base_sha: str) -> dict[str, Path]:
    """Teacher and base (cached), then one distilled student per LSP starting from the base; returns run dirs."""
    log("3/5 teacher (4 layers, hidden 128) on full traces, base student (2 layers, hidden 96) on easier "
        "problems, then the students distilled from the teacher per LSP, starting from the base")
    runs = {"teacher": train_cached(s, out, name="teacher", prefix=prefixes["1.0"], tokenizer=tokenizer,
                                    corpus_sha=corpus_sha, arch=s.teacher_arch, steps=s.teacher_steps),
            "base": train_cached(s, out, name="base", prefix=out / "bins" / "base_lsp1.0", tokenizer=tokenizer,
                                 corpus_sha=base_sha, arch=s.student_arch, steps=s.base_steps)}
    teacher_ckpt = str(resolve_checkpoint(runs["teacher"] / "checkpoints"))
    base_ckpt = str(resolve_checkpoint(runs["base"] / "checkpoints"))
    for lsp in s.lsps:
        run_dir = out / "runs" / f"student_lsp{lsp}"
        shutil.rmtree(run_dir, ignore_errors=True)  # a fresh run, not a resume of the last quickstart
        config = run_config(s, prefix=prefixes[lsp], tokenizer=tokenizer, run_dir=run_dir, arch=s.student_arch,
                            steps=s.student_steps, teacher_ckpt=teacher_ckpt, student_load=base_ckpt)
        experiments.launch_trainer(config, path=out / "configs" / f"student_lsp{lsp}.yaml", ranks=s.ranks,
                                   tag="quickstart")
        runs[f"student_lsp{lsp}"] = run_dir
    return runs


if __name__ == "__main__":
    sys.exit(main())

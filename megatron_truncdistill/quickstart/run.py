"""``make quickstart``: the paper's LSP 1.0 vs 0.5 distillation study, in miniature, on CPU ranks.

1. generate a seeded reasoning corpus (prompt / <think> CoT </think> / answer) with a held-out test split;
2. preprocess it with the real pipeline at LSP 1.0 and LSP 0.5;
3. train a small teacher on the full traces (cached by its settings), then distill a smaller student from it at
   LSP 1.0 and 0.5 with the real trainer under torchrun on 2 CPU ranks (tensor parallel);
4. evaluate teacher and students by greedy generation on the held-out problems (exact match);
5. write results.md / results.json / results.png, with the planner's predictions beside the measurements.
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
from megatron_truncdistill.quickstart.corpus import generate, split_train_test, write_jsonl
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
    test_records: int = 200
    teacher_steps: int = 600
    student_steps: int = 300
    global_batch_size: int = 16
    micro_batch_size: int = 8
    lr: float = 5e-3
    ranks: int = 2
    lsps: tuple[str, ...] = ("1.0", "0.5")
    teacher_arch: dict = field(default_factory=lambda: dict(TEACHER_ARCH))
    student_arch: dict = field(default_factory=lambda: dict(STUDENT_ARCH))


def log(message: str) -> None:
    experiments.log(message, tag="quickstart")


def make_corpus(s: QuickstartSettings, out: Path) -> tuple[Path, list[dict]]:
    train, test = split_train_test(generate(s.train_records + s.test_records, seed=s.seed),
                                   test_size=s.test_records)
    write_jsonl(test, out / "data" / "test.jsonl")
    return write_jsonl(train, out / "data" / "train.jsonl"), test


def run_config(s: QuickstartSettings, *, prefix: Path, tokenizer: Path, run_dir: Path, arch: dict,
               steps: int, teacher_ckpt: str | None) -> dict:
    """The trainer YAML of one run: teacher training is the student-only mode (no teacher, CE on COT+ANSWER)."""
    distill = ({"kd_weight": 0.5, "divergence": "forward_kl", "temperature": 1.0,
                "loss_sections": ["PROMPT", "COT", "ANSWER"]} if teacher_ckpt else
               {"kd_weight": 0.0, "loss_sections": ["COT", "ANSWER"]})
    return {
        "data": {"prefixes": [str(prefix)], "tokenizer": str(tokenizer), "seq_length": 0, "valid_fraction": 0.0},
        "student": {"architecture": arch},
        "teacher": {"load": teacher_ckpt} if teacher_ckpt else None,
        "parallel": {"tensor_model_parallel_size": s.ranks if teacher_ckpt else 1},
        "distill": distill,
        "train": {"train_steps": steps, "micro_batch_size": s.micro_batch_size, "global_batch_size":
                  s.global_batch_size, "seed": s.seed},
        "optimizer": {"lr": s.lr, "min_lr": s.lr / 10, "warmup_fraction": 0.05, "weight_decay": 0.01},
        "logging": {"run_dir": str(run_dir), "tensorboard": True},
    }


def _hash(payload: dict) -> str:
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()[:12]


def train_teacher(s: QuickstartSettings, out: Path, *, prefix: Path, tokenizer: Path, corpus_sha: str) -> Path:
    """Train the teacher once per (corpus, settings); later runs reuse the cached checkpoint."""
    key = _hash({"corpus": corpus_sha, "arch": s.teacher_arch, "steps": s.teacher_steps, "lr": s.lr,
                 "gbs": s.global_batch_size, "seed": s.seed})
    run_dir = out / "cache" / f"teacher-{key}"
    latest = run_dir / "checkpoints" / "latest"
    if latest.is_file():
        log(f"reusing cached teacher {run_dir}")
        return run_dir
    config = run_config(s, prefix=prefix, tokenizer=tokenizer, run_dir=run_dir, arch=s.teacher_arch,
                        steps=s.teacher_steps, teacher_ckpt=None)
    config["parallel"] = {"tensor_model_parallel_size": 1}  # data parallel over the ranks: fastest for a tiny model
    experiments.launch_trainer(config, path=out / "configs" / "teacher.yaml", ranks=s.ranks, tag="quickstart")
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
    parser.add_argument("--teacher-steps", type=int, default=QuickstartSettings.teacher_steps)
    parser.add_argument("--student-steps", type=int, default=QuickstartSettings.student_steps)
    parser.add_argument("--train-records", type=int, default=QuickstartSettings.train_records)
    parser.add_argument("--test-records", type=int, default=QuickstartSettings.test_records)
    args = parser.parse_args(argv)
    s = QuickstartSettings(out_dir=args.out_dir, teacher_steps=args.teacher_steps, student_steps=args.student_steps,
                           train_records=args.train_records, test_records=args.test_records)
    out = Path(s.out_dir).resolve()
    (out / "configs").mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    log(f"1/5 corpus: {s.train_records} generated problems, {s.test_records} held out")
    corpus, test = make_corpus(s, out)
    tokenizer = build_tiny_tokenizer(out / "tokenizer")
    log("2/5 preprocess at LSP " + " and ".join(s.lsps))
    prefixes = {lsp: out / "bins" / f"train_lsp{lsp}" for lsp in s.lsps}
    manifests = {lsp: experiments.preprocess_corpus([str(corpus)], tokenizer=str(tokenizer), prefix=prefixes[lsp],
                                                    lsp=lsp) for lsp in s.lsps}
    corpus_sha = manifests[s.lsps[0]]["inputs"][0]["files"][0]["sha256"]
    log("3/5 teacher (4 layers, hidden 128) on full traces, then students (2 layers, hidden 96) per LSP")
    runs = {"teacher": train_teacher(s, out, prefix=prefixes["1.0"], tokenizer=tokenizer, corpus_sha=corpus_sha)}
    teacher_ckpt = str(runs["teacher"] / "checkpoints")
    for lsp in s.lsps:
        run_dir = out / "runs" / f"student_lsp{lsp}"
        shutil.rmtree(run_dir, ignore_errors=True)  # a fresh run, not a resume of the last quickstart
        config = run_config(s, prefix=prefixes[lsp], tokenizer=tokenizer, run_dir=run_dir, arch=s.student_arch,
                            steps=s.student_steps, teacher_ckpt=str(resolve_checkpoint(teacher_ckpt)))
        experiments.launch_trainer(config, path=out / "configs" / f"student_lsp{lsp}.yaml", ranks=s.ranks,
                                   tag="quickstart")
        runs[f"student_lsp{lsp}"] = run_dir
    log("4/5 greedy evaluation on the held-out problems")
    accuracy = experiments.evaluate_checkpoints({name: d / "checkpoints" for name, d in runs.items()},
                                                tokenizer=tokenizer, records=test, extract=answer_line,
                                                group_key="task", tag="quickstart")
    log("5/5 report")
    costs = {name: report.run_costs(run_dir / "metrics.jsonl") for name, run_dir in runs.items()}
    results = {name: {"lsp": "1.0" if name == "teacher" else name.split("lsp")[1], **accuracy[name],
                      "costs": costs[name]} for name in runs}
    rows = report.build_rows(results)
    predicted = predicted_vs_measured(s, prefixes, {lsp: costs[f"student_lsp{lsp}"] for lsp in s.lsps})
    text = report.markdown(rows, predicted=predicted, machine=report.machine_name())
    (out / "results.md").write_text(text)
    (out / "results.json").write_text(json.dumps({"settings": asdict(s), "rows": rows, "costs": costs,
                                                  "wall_s": time.perf_counter() - start}, indent=2, default=str))
    report.plot(rows, out / "results.png")
    print("\n" + text)
    log(f"done in {time.perf_counter() - start:.0f}s: {out / 'results.md'}, results.json, results.png")
    return 0


if __name__ == "__main__":
    sys.exit(main())

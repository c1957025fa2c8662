"""Shared set-up for trainer tests: tiny bins from the quickstart corpus, and TP1-built initial checkpoints.

Both models are built once at TP1/PP1 and saved; every layout then loads the same weights (PP stages consume the
RNG differently, so seeds alone would not give equal weights).
"""

from __future__ import annotations

from pathlib import Path

import yaml

from megatron_truncdistill.config import Config, load_config
from megatron_truncdistill.quickstart.corpus import generate, write_jsonl
from megatron_truncdistill.quickstart.tiny_tokenizer import build_tiny_tokenizer

REPO = Path(__file__).resolve().parents[1]
TINY_YAML = REPO / "examples" / "tiny_cpu.yaml"


def preprocess_main():
    from megatron_truncdistill.preprocess.cli import main

    return main


def make_tiny_bins(root: Path, *, records: int = 96, lsp: str = "1.0", seed: int = 7) -> tuple[str, str]:
    """(bins prefix, tokenizer dir) of a freshly generated corpus."""
    tokenizer = build_tiny_tokenizer(root / "tokenizer")
    corpus = write_jsonl(generate(records, seed=seed), root / "corpus.jsonl")
    prefix = root / f"tiny_lsp{lsp}"
    code = preprocess_main()(["--input", str(corpus), "--output-prefix", str(prefix), "--tokenizer", str(tokenizer),
                              "--lsp", lsp, "--workers", "1", "--no-progress"])
    assert code == 0
    return str(prefix), str(tokenizer)


def tiny_config(*, prefix: str, tokenizer: str, run_dir: str, overrides: list[str] = ()) -> Config:
    """examples/tiny_cpu.yaml pointed at the given bins, with test-sized steps and extra dotted overrides."""
    tree = yaml.safe_load(TINY_YAML.read_text())
    tree["data"].update(prefixes=[prefix], tokenizer=tokenizer)
    tree["logging"] = {"run_dir": run_dir, "tensorboard": False}
    tree["train"].update(train_steps=3, eval_interval=0)
    tree["checkpoint"] = {"save_interval": 0}
    path = Path(run_dir).parent / (Path(run_dir).name + ".yaml")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(tree))
    return load_config(path, list(overrides))


def save_initial_models(config: Config, out_dir: str) -> dict[str, str]:
    """Rank function (world 1): build student and teacher at TP1/PP1 with the trainer's builder and save both."""
    from megatron_truncdistill.checkpoint.model_checkpoint import ModelMeta, save_model_checkpoint
    from megatron_truncdistill.parallel import destroy_parallel, initialize_parallel
    from megatron_truncdistill.tokenization import load_tokenizer
    from megatron_truncdistill.models.builder import padded_vocab_size
    from megatron_truncdistill.training.assembly import build_stage, plan_model

    tok = load_tokenizer(config.data.tokenizer)
    ctx = initialize_parallel(1, 1, seed=99)
    padded = padded_vocab_size(tok.vocab_size, 1)
    paths = {}
    for key in ("student", "teacher"):
        plan = plan_model(getattr(config, key), key)
        model = build_stage(getattr(config, key), plan, ctx, padded_vocab=padded, sequence_parallel=False)
        paths[key] = str(Path(out_dir) / key)
        save_model_checkpoint([model], paths[key], ModelMeta(hf_config=plan.hf_config, vocab_size=tok.vocab_size,
                                                             padded_vocab_size=padded, params_dtype="float32",
                                                             tokenizer=tok.identity()))
    destroy_parallel()
    return paths


DEVICE_CHECK = {"TRUNCDISTILL_DEVICE_CHECK": "1"}
"""``run_gloo_ranks(..., env=DEVICE_CHECK)``: ranks run the GPU code path under ``runtime.device_check``."""


def prepare_trainer_inputs(root: Path) -> dict:
    """Tiny bins plus TP1-built initial student and teacher checkpoints: every layout loads the same weights."""
    from gloo_ranks import run_gloo_ranks

    prefix, tokenizer = make_tiny_bins(root)
    base = tiny_config(prefix=prefix, tokenizer=tokenizer, run_dir=str(root / "init_run"))
    paths = run_gloo_ranks(save_initial_models, 1, base, str(root / "init"), timeout=120)[0]
    return {"root": root, "prefix": prefix, "tokenizer": tokenizer, **paths}


def trainer_config(tiny: dict, run_dir, *overrides: str) -> Config:
    """``tiny_config`` starting both models from the saved initial checkpoints."""
    loads = [f"student.load={tiny['student']}", f"teacher.load={tiny['teacher']}"]
    return tiny_config(prefix=tiny["prefix"], tokenizer=tiny["tokenizer"], run_dir=str(run_dir),
                       overrides=loads + list(overrides))


def read_metrics(run_dir) -> list[dict]:
    import json

    return [json.loads(line) for line in (Path(run_dir) / "metrics.jsonl").read_text().splitlines()]


def train_losses(config: Config, world: int, *, env: dict | None = None, timeout: float = 240) -> list[float]:
    """Run the trainer on ``world`` gloo ranks; the logged loss of every step."""
    from gloo_ranks import run_gloo_ranks
    from megatron_truncdistill.train import run_training

    run_gloo_ranks(run_training, world, config, timeout=timeout, env=env)
    return [r["loss"] for r in read_metrics(config.logging.run_dir) if "loss" in r]

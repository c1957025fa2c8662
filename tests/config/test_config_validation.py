"""Every start-up refusal names the config key to change."""

from __future__ import annotations

import pytest

from distill_setup import make_tiny_bins, tiny_config
from megatron_truncdistill.config import load_config
from megatron_truncdistill.errors import ConfigError
from megatron_truncdistill.data.bins import open_bins
from megatron_truncdistill.quickstart.tiny_tokenizer import build_tiny_tokenizer
from megatron_truncdistill.tokenization import load_tokenizer
from megatron_truncdistill.training import validation
from megatron_truncdistill.training.assembly import plan_model


@pytest.fixture(scope="module")
def bins(tmp_path_factory):
    root = tmp_path_factory.mktemp("validation")
    prefix, tokenizer = make_tiny_bins(root, records=16)
    return root, prefix, tokenizer


def _config(bins, *overrides):
    root, prefix, tokenizer = bins
    return tiny_config(prefix=prefix, tokenizer=tokenizer, run_dir=str(root / "run"), overrides=list(overrides))


def _plans(config):
    return [plan_model(config.student, "student"), plan_model(config.teacher, "teacher")]


@pytest.mark.parametrize("overrides, world, match", [
    (["parallel.tensor_model_parallel_size=3"], 3, r"tensor_model_parallel_size=3 must divide the student's attention"),
    (["parallel.pipeline_model_parallel_size=4"], 4, r"pipeline_model_parallel_size=4 must divide the student's num_layers"),
    (["parallel.tensor_model_parallel_size=2"], 3, r"parallel: world size 3 is not divisible"),
    (["train.global_batch_size=6"], 4, r"train.global_batch_size=6 is not divisible by train.micro_batch_size"),
])
def test_impossible_layouts_are_refused_by_key(bins, overrides, world, match):
    config = _config(bins, *overrides)
    with pytest.raises(ConfigError, match=match):
        validation.check_layout(config, _plans(config), world_size=world)


def test_sequence_parallel_on_cpu_is_refused(bins):
    with pytest.raises(ConfigError, match="parallel.sequence_parallel"):
        validation.check_machine(_config(bins, "parallel.sequence_parallel=true"))


def test_fp8_without_transformer_engine_is_refused(bins):
    with pytest.raises(ConfigError, match=r"teacher.fp8=hybrid: FP8 runs through Transformer Engine"):
        validation.check_machine(_config(bins, "teacher.fp8=hybrid"))


def test_model_vocabulary_smaller_than_tokenizer_is_refused(bins):
    config = _config(bins, "student.architecture.vocab_size=64")
    tok = load_tokenizer(config.data.tokenizer)
    with pytest.raises(ConfigError, match=r"student: the model has 64 vocabulary rows but the tokenizer .* has 102"):
        validation.check_vocabularies(_plans(config), tok)


def test_bins_made_with_another_tokenizer_are_refused(bins, tmp_path):
    _, prefix, _ = bins
    other_dir = build_tiny_tokenizer(tmp_path / "other")
    (other_dir / "tokenizer.json").write_text((other_dir / "tokenizer.json").read_text().replace('"<unk>"', '"<UNK>"'))
    with pytest.raises(ValueError, match=r"data.prefixes: .*tiny_lsp1.0: data was tokenized with"):
        open_bins(prefix, tokenizer=load_tokenizer(other_dir))


@pytest.mark.parametrize("overrides, match", [
    (["parallel.virtual_pipeline_model_parallel_size=2"], "parallel.virtual_pipeline_model_parallel_size"),
    (["parallel.bogus=1"], r"parallel.bogus: unknown key"),
    (["distill.loss_sections=[COT, THOUGHTS]"], r"distill.loss_sections: unknown section 'THOUGHTS'"),
    (["teacher=null"], r"teacher: teacher: null \(student-only\) requires distill.kd_weight=0"),
    (["student.params_dtype=float16"], r"student.params_dtype: 'float16' is not one of float32, bfloat16"),
    (["teacher.fp8=e5m2"], r"teacher.fp8: 'e5m2' is not one of hybrid, e4m3 or null"),
    (["student.fp8_recipe=fancy"], r"student.fp8_recipe: 'fancy' is not one of delayed, tensorwise, mxfp8, blockwise"),
    (["student.recompute=some"], r"student.recompute: 'some' is not one of full, selective or null"),
    (["logging.log_interval=0"], r"logging.log_interval: must be positive"),
    (["optimizer.lr=fast"], r"optimizer.lr: expected a number"),
    (["distill.kd_weight=1.5"], r"distill.kd_weight: must be in \[0, 1\]"),
])
def test_config_only_refusals_name_the_key(bins, overrides, match):
    with pytest.raises(ConfigError, match=match):
        _config(bins, *overrides)


def test_missing_config_file_is_named(tmp_path):
    with pytest.raises(ConfigError, match="--config .*nope.yaml: no such file"):
        load_config(tmp_path / "nope.yaml")


def test_checkpoint_from_another_tokenizer_is_refused(bins):
    from dataclasses import replace
    from types import SimpleNamespace

    config = _config(bins)
    tok = load_tokenizer(config.data.tokenizer)
    student, teacher = _plans(config)
    foreign = SimpleNamespace(tokenizer={"files_sha256": "0" * 64, "path": "/models/llama3", "vocab_size": 128256})
    with pytest.raises(ConfigError, match=r"teacher.load: checkpoint was made with tokenizer /models/llama3 "
                                          r"\(vocab 128256\) but data.tokenizer is .* \(vocab 102\)"):
        validation.check_vocabularies([student, replace(teacher, meta=foreign)], tok)

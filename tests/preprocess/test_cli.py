"""tools/preprocess.py fatal errors: one ``error:`` line naming the file and the fix, non-zero exit, no output."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def cli():
    spec = importlib.util.spec_from_file_location("preprocess_cli", REPO / "tools" / "preprocess.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture
def run_cli(cli, capsys, qwen3_dir, tmp_path):
    """``run_cli(*args, tokenizer=qwen3) -> (exit code, stderr lines)``; --output-prefix defaults to tmp/out."""

    def _run(*args, tokenizer=qwen3_dir, prefix=None):
        argv = [*args, "--tokenizer", tokenizer, "--output-prefix", prefix or str(tmp_path / "out"), "--no-progress"]
        code = cli.main([str(a) for a in argv])
        return code, capsys.readouterr().err.strip().splitlines()

    return _run


def _no_output(directory: Path) -> bool:
    return not [p for p in directory.iterdir() if p.name.startswith(("out", ".out"))]


@pytest.fixture
def good_file(tmp_path, traces):
    return traces.write_jsonl(tmp_path / "good.jsonl", traces.short_rows(traces.r1, 1))


def test_success_prints_summary(run_cli, good_file, tmp_path, capsys):
    code, err = run_cli("--input", good_file, "--lsp", "0.5")
    assert code == 0 and err == []
    assert (tmp_path / "out.manifest.json").is_file() and (tmp_path / "out_tokens.bin").is_file()
    code, err = run_cli("--input", good_file)
    assert code == 2 and err == [f"error: {tmp_path / 'out_tokens.bin'}: output already exists; pass --overwrite "
                                 "or another --output-prefix"]


@pytest.mark.parametrize("case", ["missing", "glob", "not_writable", "bad_lsp", "json_array", "dir"])
def test_fatal_input_and_option_errors(case, run_cli, tmp_path, good_file):
    args, needle = {
        "missing": (["--input", tmp_path / "nope.jsonl"], "nope.jsonl: no such file"),
        "glob": (["--input", tmp_path / "*.parquet"], "*.parquet: no such file"),
        "not_writable": (["--input", good_file], "choose an --output-prefix in a writable directory"),
        "bad_lsp": (["--input", good_file, "--lsp", "1.5"], "--lsp 1.5: must be in (0, 1]"),
        "json_array": (["--input", tmp_path / "bad.json"], "bad.json:2: malformed JSON array"),
        "dir": (["--input", tmp_path / "sub"], "sub: is a directory"),
    }[case]
    (tmp_path / "bad.json").write_text('[{"prompt": "a",\n "full_response": }]')
    (tmp_path / "sub").mkdir()
    (tmp_path / "a_file").write_text("")
    prefix = str(tmp_path / "a_file" / "out") if case == "not_writable" else None
    code, err = run_cli(*args, prefix=prefix)
    assert code == 2 and len(err) == 1 and err[0].startswith("error: ") and needle in err[0], err
    assert _no_output(tmp_path)


def test_tokenizer_without_chat_template(run_cli, tmp_path, qwen3_dir, good_file):
    bare = tmp_path / "bare_tokenizer"
    bare.mkdir()
    os.symlink(Path(qwen3_dir) / "tokenizer.json", bare / "tokenizer.json")
    config = json.loads((Path(qwen3_dir) / "tokenizer_config.json").read_text())
    config.pop("chat_template")
    (bare / "tokenizer_config.json").write_text(json.dumps(config))
    code, err = run_cli("--input", good_file, tokenizer=bare)
    assert code == 2 and err == [f"error: {bare}: tokenizer has no chat template; pass --chat-format chatml"]
    assert _no_output(tmp_path)
    code, err = run_cli("--input", good_file, "--chat-format", "chatml", tokenizer=bare)
    assert code == 0


def test_strict_fails_on_first_reject_with_file_and_line(run_cli, tmp_path, traces):
    src = traces.write_jsonl(tmp_path / "s.jsonl", traces.short_rows(traces.r1, 1) + ["{oops"])
    code, err = run_cli("--input", src, "--strict")
    assert code == 2 and len(err) == 1 and err[0].startswith(f"error: {src}:2: rejected (malformed_json")
    assert "--strict" in err[0] and _no_output(tmp_path)


def test_interrupted_run_leaves_no_file(run_cli, tmp_path, good_file, monkeypatch):
    from megatron_truncdistill.preprocess.writer import DatasetWriter

    def interrupt(self, chunk):
        raise KeyboardInterrupt

    monkeypatch.setattr(DatasetWriter, "add", interrupt)
    code, err = run_cli("--input", good_file)
    assert code == 130 and err == [f"error: interrupted; no output was written under {tmp_path / 'out'}"]
    assert _no_output(tmp_path)


def test_real_process_prints_no_traceback(tmp_path):
    """The entry point as users run it: one line on stderr, exit 2 (fails before torch is imported: fast)."""
    proc = subprocess.run([sys.executable, str(REPO / "tools" / "preprocess.py"), "--input", str(tmp_path / "x"),
                           "--output-prefix", str(tmp_path / "out"), "--tokenizer", str(tmp_path)],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert proc.stderr.strip() == f"error: {tmp_path / 'x'}: no such file; check the --input path or glob"

"""The preprocessing CLI: a user error is one ``error:`` line naming the file, record or option and the fix, exit 2,
no output; a bug keeps its traceback."""

from __future__ import annotations

import gzip
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from megatron_truncdistill.preprocess import cli as preprocess_cli

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def cli():
    return preprocess_cli


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


def test_console_script_and_shim_run_the_package_cli():
    pyproject = (REPO / "pyproject.toml").read_text()
    scripts = pyproject[pyproject.index("[project.scripts]"):].split("\n\n")[0]
    assert 'truncdistill-preprocess = "megatron_truncdistill.preprocess.cli:main"' in scripts.splitlines()
    assert "from megatron_truncdistill.preprocess.cli import main" in (REPO / "tools" / "preprocess.py").read_text()


def test_a_bug_keeps_its_traceback(run_cli, good_file, monkeypatch):
    """Only user errors become one line; anything else propagates (the old CLI printed "internal error", exit 3)."""
    def broken(cfg):
        raise RuntimeError("a bug in the pipeline")

    monkeypatch.setattr(preprocess_cli, "run", broken)
    with pytest.raises(RuntimeError, match="a bug in the pipeline"):
        run_cli("--input", good_file)


@pytest.mark.parametrize("args, line", [
    (["--truncation", "middle-out"], "error: argument --truncation: invalid choice: 'middle-out'"),
    (["--workers", "two"], "error: argument --workers: invalid int value: 'two'"),
    (["--lsp", "nan"], "error: --lsp nan: not a number; write a decimal such as 0.5 or a fraction such as 1/2"),
    (["--lsp", "inf"], "error: --lsp inf: not a number"),
    (["--lsp", "abc"], "error: --lsp abc: not a number"),
    (["--lsp", "1/0"], "error: --lsp 1/0: not a number"),
    (["--lsp", "-0.5"], "error: --lsp -0.5: must be in (0, 1]"),
])
def test_bad_option_values_are_one_line_naming_the_option(run_cli, good_file, tmp_path, args, line):
    code, err = run_cli("--input", good_file, *args)
    assert code == 2 and len(err) == 1 and err[0].startswith(line), err
    assert _no_output(tmp_path)


@pytest.mark.parametrize("args, names", [
    (["--truncation", "none", "--lsp", "0.5"], ("--lsp 0.5", "--truncation none")),
    (["--truncation", "token-budget", "--max-tokens", "9", "--lsp", "0.5"], ("--lsp 0.5", "--truncation token-budget")),
    (["--max-tokens", "100"], ("--max-tokens 100", "--truncation lead-span")),
    (["--keep", "left"], ("--keep left", "--truncation lead-span")),
    (["--window-scope", "sequence"], ("--window-scope sequence", "--truncation lead-span")),
    (["--truncation", "cot-span", "--protocol", "paper"], ("--protocol paper", "--truncation cot-span")),
    (["--protocol", "paper", "--system-key", "sys"], ("--protocol paper", "--system-key sys")),
    (["--protocol", "paper", "--truncation", "window", "--keep", "left", "--window-scope", "response"],
     ("--protocol paper", "--window-scope response")),
    (["--eod-token", "<|endoftext|>"], ("--eod-token", "--append-eod")),
    (["--format", "prompt-response", "--cot-key", "c"], ("--cot-key", "--format prompt-response")),
    (["--cot-key", "c", "--response-key", "r"], ("--response-key", "--cot-key")),
])
def test_conflicting_options_are_refused_naming_both(run_cli, good_file, tmp_path, args, names):
    code, err = run_cli("--input", good_file, *args)
    assert code == 2 and len(err) == 1 and all(name in err[0] for name in names), err
    assert _no_output(tmp_path)


def _corrupt_gzip(path: Path, payload: bytes) -> Path:
    data = bytearray(gzip.compress(payload))
    data[12:30] = bytes(b ^ 0x55 for b in data[12:30])  # inside the deflate stream: zlib.error, not an OSError
    path.write_bytes(bytes(data))
    return path


def test_corrupt_gzip_is_one_line_naming_the_file(run_cli, tmp_path, good_file):
    bad_gz = _corrupt_gzip(tmp_path / "bad.jsonl.gz", good_file.read_bytes() * 50)
    code, err = run_cli("--input", bad_gz)
    assert code == 2 and len(err) == 1 and err[0].startswith(f"error: {bad_gz}: cannot be read ("), err
    assert _no_output(tmp_path)


def test_empty_input_file_is_one_line_naming_it(run_cli, tmp_path, good_file):
    empty = tmp_path / "empty.jsonl"
    empty.write_text("\n\n")
    code, err = run_cli("--input", good_file, empty)
    assert code == 2 and err == [f"error: {empty}: empty input (no records); remove it from --input or check that "
                                 "the file was written completely"]
    assert _no_output(tmp_path)


def test_utf8_bom_is_not_data(run_cli, tmp_path, good_file, traces):
    """A BOM before a JSON array (or the first JSONL line) used to make the whole file one malformed JSONL line."""
    rows = [json.loads(line) for line in good_file.read_text().splitlines()]
    (tmp_path / "bom.json").write_bytes(b"\xef\xbb\xbf" + json.dumps(rows).encode())
    (tmp_path / "bom.jsonl").write_bytes(b"\xef\xbb\xbf" + good_file.read_bytes())
    for name in ("bom.json", "bom.jsonl"):
        code, err = run_cli("--input", tmp_path / name, prefix=str(tmp_path / name.replace(".", "_")))
        assert code == 0 and err == [], (name, err)
        manifest = json.loads((tmp_path / f"{name.replace('.', '_')}.manifest.json").read_text())
        assert manifest["counts"]["written"] == 1 and manifest["counts"]["rejected"] == 0


@pytest.mark.parametrize("damaged", ["tokenizer.json", "tokenizer_config.json"])
def test_damaged_tokenizer_files_are_one_line_naming_the_file(run_cli, tmp_path, qwen3_dir, good_file, damaged):
    tok = tmp_path / "tok"
    tok.mkdir()
    for name in ("tokenizer.json", "tokenizer_config.json"):
        if name == damaged:
            (tok / name).write_text('{"truncated": ')
        else:
            os.symlink(Path(qwen3_dir) / name, tok / name)
    code, err = run_cli("--input", good_file, tokenizer=tok)
    assert code == 2 and len(err) == 1 and err[0].startswith(f"error: {tok / damaged}: not "), err
    assert "restore the file" in err[0] and _no_output(tmp_path)

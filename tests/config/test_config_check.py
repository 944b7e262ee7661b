"""``tightwad config check``: exit codes, the summary, the one-line error."""

from __future__ import annotations

from pathlib import Path

import pytest

from tightwad.config import check_main

REPO = Path(__file__).resolve().parents[2]


def test_seed_file_passes_with_a_summary(capsys: pytest.CaptureFixture[str]) -> None:
    seed = REPO / "configs" / "cluster.yaml"
    assert check_main([str(seed)], env={}) == 0
    out, err = capsys.readouterr()
    assert err == ""
    lines = out.splitlines()
    assert lines[0] == f"{seed}: OK (cluster 'tightwad')"
    assert "  qwen3-72b (default): /models/Qwen3-72B-Q4_K_M.gguf ctx 8192" in lines
    assert "GPUs: 4, total VRAM 76 GB" in lines
    assert any(line.startswith("  qwen3:32b -> ollama qwen3:32b at http://") for line in lines)
    assert "warnings (2):" in lines
    assert "  proxy.host (line 52): the OpenAI endpoint listens on 0.0.0.0 without an api key" in (
        lines
    )
    assert len(lines) <= 30  # one screen


def test_bad_file_fails_with_one_line_on_stderr(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    file = tmp_path / "bad.yaml"
    file.write_text("workers:\n  - host: 10.0.0.5\n    gpus:\n      - {name: a, vram_gb: 8}\n")
    assert check_main([str(file)], env={}) == 1
    out, err = capsys.readouterr()
    assert out == ""
    assert err == f"{file}: workers[0].gpus[0].rpc_port (line 4): is required\n"


def test_rpc_server_on_all_interfaces_is_a_warning_when_allowed(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    file = tmp_path / "open.yaml"
    file.write_text(
        "cluster:\n  allow_public_bind: true\n"
        "workers:\n  - host: 10.0.0.5\n    rpc_bind: 0.0.0.0\n"
        "    gpus: [{name: a, vram_gb: 8, rpc_port: 50052}]\n"
    )
    assert check_main([str(file)], env={}) == 0
    out = capsys.readouterr().out
    assert (
        "  workers[0].rpc_bind (line 5): rpc-servers listen on 0.0.0.0 (all interfaces) "
        "with no auth"
    ) in out.splitlines()


def test_without_file_uses_tightwad_config(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    file = tmp_path / "c.yaml"
    file.write_text("version: 3\n")
    assert check_main([], env={"TIGHTWAD_CONFIG": str(file)}) == 1
    assert capsys.readouterr().err.startswith(f"{file}: version (line 1): unsupported version 3")


def test_missing_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    missing = tmp_path / "none.yaml"
    assert check_main([str(missing)], env={}) == 1
    assert capsys.readouterr().err == f"{missing}: <root>: cannot read {missing}: no such file\n"


def test_usage_error_exits_2(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as caught:
        check_main(["a.yaml", "b.yaml"], env={})
    assert caught.value.code == 2
    assert "usage: tightwad config check" in capsys.readouterr().err

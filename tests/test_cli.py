"""The command line, run as a real console script in a subprocess."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from deltascope import Comparison
from deltascope.cli import main

SCRIPT = Path(sys.executable).parent / "deltascope"


def run(*args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    cmd = [str(SCRIPT)] if SCRIPT.exists() else [sys.executable, "-m", "deltascope"]
    return subprocess.run([*cmd, *args], capture_output=True, text=True, timeout=300, env={**os.environ, **(env or {})})


def test_demo_runs_offline(tmp_path: Path) -> None:
    r = run("demo", "-o", str(tmp_path / "out"), env={"DELTASCOPE_CACHE": str(tmp_path / "cache")})
    assert r.returncode == 0, r.stderr
    assert "synthetic" in r.stderr and "mlp" in r.stdout and "attention" in r.stdout
    out = tmp_path / "out"
    for f in (
        "comparison.json",
        "tensors.csv",
        "by_block.csv",
        "by_module.csv",
        "by_layer.csv",
        "by_layer_module.csv",
        "mismatches.csv",
        "summary.json",
    ):
        assert (out / f).is_file(), f
    summary = json.loads((out / "summary.json").read_text())
    assert summary["complete"] is True and summary["n_errors"] == 0
    cmp = Comparison.from_json(out / "comparison.json")
    assert summary["summary"]["n_changed_exact"] == int(cmp.summary()["n_changed_exact"].iloc[0])


def test_compare_json_stdout(make_pair) -> None:
    b, t, *_ = make_pair()
    r = run("compare", str(b), str(t), "--format", "json", "--blocks", "mlp")
    assert r.returncode == 0, r.stderr
    data = json.loads(r.stdout)
    assert set(data["by_block"]) == {"mlp"}
    assert data["summary"]["changed_exact"] == 0


def test_missing_path_exits_2_with_message(tmp_path: Path) -> None:
    r = run("compare", str(tmp_path / "nope"), str(tmp_path / "nope2"))
    assert r.returncode == 2
    assert r.stderr.startswith("Error:") and "does not exist" in r.stderr and "--debug" in r.stderr
    assert r.stdout == ""


def test_corrupt_file_exits_2(tmp_path: Path) -> None:
    (tmp_path / "bad.safetensors").write_bytes(b"\xff" * 20)
    r = run("compare", str(tmp_path / "bad.safetensors"), str(tmp_path / "bad.safetensors"))
    assert r.returncode == 2 and "safetensors header" in r.stderr


def test_usage_errors() -> None:
    assert run().returncode == 2
    assert run("compare").returncode == 2
    assert run("--version").stdout.startswith("deltascope ")
    h = run("compare", "--help")
    assert h.returncode == 0 and "examples:" in h.stdout


def test_main_returns_codes_in_process(make_pair, capsys: pytest.CaptureFixture[str]) -> None:
    b, t, *_ = make_pair()
    assert main(["compare", str(b), str(t), "--no-progress"]) == 0
    assert "changed_exact" in capsys.readouterr().out
    assert main(["compare", str(b), "/no/such/path"]) == 2

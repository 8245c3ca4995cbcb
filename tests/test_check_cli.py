"""``deltascope check`` as a real console script: exit codes 0/1/2, --exit-zero, outputs
on stdout and in files, saved results and baselines."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest
import torch

from deltascope.cli import main

SCRIPT = Path(sys.executable).parent / "deltascope"

POLICY = """\
[policy]
name = "gate"

[[rules]]
name = "frozen-embeddings"
kind = "identical"
blocks = ["embedding"]

[[rules]]
name = "mlp-sparsity"
metric = "changed_exact"
blocks = ["mlp"]
scope = "aggregate"
max = {max}

[[rules]]
name = "drift"
kind = "baseline"
metrics = ["changed_exact", "rel_update"]
by = ["block"]
abs_tol = 0.01
"""


def run(*args: str) -> subprocess.CompletedProcess:
    assert SCRIPT.exists(), f"console script missing at {SCRIPT}; is deltascope installed in this venv?"
    env = {**os.environ, "DELTASCOPE_NO_PROGRESS": "1"}
    return subprocess.run([str(SCRIPT), *args], capture_output=True, text=True, timeout=300, env=env)


def bump(t: torch.Tensor, k: int) -> torch.Tensor:
    bits = t.reshape(-1).view(torch.int16).clone()
    bits[torch.randperm(t.numel(), generator=torch.Generator().manual_seed(0))[:k]] += 4
    return bits.view(torch.bfloat16).reshape(t.shape)


@pytest.fixture
def pair(make_pair) -> tuple[Path, Path]:
    """A pair whose MLPs changed in 20 % of their coordinates, nothing else."""
    b, t, *_ = make_pair(lambda s: {k: bump(v, v.numel() // 5) if ".mlp." in k else v for k, v in s.items()})
    return b, t


def policy_file(tmp_path: Path, max_: float, name: str = "release.toml") -> Path:
    p = tmp_path / name
    p.write_text(POLICY.format(max=max_))
    return p


def test_exit_codes_pass_violations_and_exit_zero(pair, tmp_path: Path) -> None:
    b, t = pair
    passing = run("check", str(b), str(t), "--policy", str(policy_file(tmp_path, 0.25, "pass.toml")))
    assert passing.returncode == 0, passing.stderr
    assert "PASSED" in passing.stdout and "SKIP  drift" in passing.stdout

    failing = policy_file(tmp_path, 0.15, "fail.toml")
    r = run("check", str(b), str(t), "--policy", str(failing), "--save", str(tmp_path / "run.json"))
    assert r.returncode == 1, r.stderr
    assert "FAIL  mlp-sparsity" in r.stdout and "bound <= 15.00%" in r.stdout and "worst: model.layers." in r.stdout
    assert (tmp_path / "run.json").is_file()

    r = run("check", str(tmp_path / "run.json"), "--policy", str(failing), "--exit-zero", "--format", "json")
    assert r.returncode == 0, r.stderr
    data = json.loads(r.stdout)
    assert data["ok"] is False and data["counts"]["failed"] == 1
    assert "FAILED" in r.stderr


def test_junit_report_and_baseline_from_saved_results(pair, tmp_path: Path) -> None:
    b, t = pair
    policy = policy_file(tmp_path, 0.25)
    first = run("check", str(b), str(t), "--policy", str(policy), "--save", str(tmp_path / "v1.json"))
    assert first.returncode == 0, first.stderr
    r = run(
        "check",
        str(tmp_path / "v1.json"),
        "--policy",
        str(policy),
        "--baseline",
        str(tmp_path / "v1.json"),
        "--format",
        "junit",
        "--json",
        str(tmp_path / "result.json"),
    )
    assert r.returncode == 0, r.stderr
    root = ET.fromstring(r.stdout)
    cases = root.findall("testsuite/testcase")
    assert [c.get("name") for c in cases] == ["frozen-embeddings", "mlp-sparsity", "drift"]
    assert all(c.find("failure") is None and c.find("skipped") is None for c in cases)
    assert json.loads((tmp_path / "result.json").read_text())["ok"] is True


def test_github_annotations_point_at_the_policy_line(pair, tmp_path: Path) -> None:
    b, t = pair
    policy = policy_file(tmp_path, 0.15)
    r = run("check", str(b), str(t), "--policy", str(policy), "--format", "github", "--junit", str(tmp_path / "r.xml"))
    assert r.returncode == 1, r.stderr
    line = [i for i, s in enumerate(policy.read_text().splitlines(), 1) if s.strip() == "[[rules]]"][1]
    annotations = [s for s in r.stdout.splitlines() if s.startswith("::")]
    assert len(annotations) == 1
    assert annotations[0].startswith(f"::error file={policy},line={line},title=deltascope check%3A mlp-sparsity::")
    failure = ET.parse(tmp_path / "r.xml").getroot().find("testsuite/testcase[@name='mlp-sparsity']/failure")
    assert failure is not None and "changed_exact" in failure.get("message")


def test_errors_exit_2_even_with_exit_zero(pair, tmp_path: Path) -> None:
    b, t = pair
    bad = tmp_path / "bad.toml"
    bad.write_text(POLICY.format(max="0.1").replace('scope = "aggregate"', 'scope = "agregate"'))
    r = run("check", str(b), str(t), "--policy", str(bad), "--exit-zero")
    assert r.returncode == 2
    line = next(i for i, s in enumerate(bad.read_text().splitlines(), 1) if s.startswith("scope ="))
    assert r.stderr.startswith("Error:") and f"{bad}:{line}: rules[1].scope" in r.stderr and "'agregate'" in r.stderr
    assert r.stdout == ""


def test_unreadable_inputs_exit_2(pair, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    b, t = pair
    policy = str(policy_file(tmp_path, 0.2))
    assert main(["check", str(tmp_path / "missing.json"), "--policy", policy, "--exit-zero"]) == 2
    assert "Cannot read saved result" in capsys.readouterr().err
    assert main(["check", str(b), str(t), "--policy", str(tmp_path / "nope.toml")]) == 2
    assert "Cannot read policy file" in capsys.readouterr().err
    assert main(["check", str(b), str(t), "--policy", policy, "--baseline", str(tmp_path / "old.json")]) == 2
    assert "Cannot read saved result" in capsys.readouterr().err


def test_main_usage_errors(tmp_path: Path, pair, capsys: pytest.CaptureFixture) -> None:
    b, t = pair
    assert main(["check", str(b), "--policy", str(policy_file(tmp_path, 0.2))]) == 2  # one input: a checkpoint folder
    assert "is a folder, not a saved result" in capsys.readouterr().err
    assert main(["check", str(b), str(t), str(t), "--policy", str(policy_file(tmp_path, 0.2))]) == 2
    assert main(["check", str(b), str(t)]) == 2  # --policy is required (argparse)

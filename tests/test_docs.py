"""The documentation stays true: generated pages are current, links resolve, and the
README's set-up commands are the ones CI runs."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_generated_pages_are_current() -> None:
    r = subprocess.run([sys.executable, str(ROOT / "docs" / "generate.py"), "--check"], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr


def test_relative_links_resolve() -> None:
    pages = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
    broken = []
    for page in pages:
        for target in re.findall(r"\]\(([^)#\s]+)(?:#[^)]*)?\)", page.read_text(encoding="utf-8")):
            if "://" in target or target.startswith("mailto:"):
                continue
            if not (page.parent / target).exists():
                broken.append(f"{page.relative_to(ROOT)} -> {target}")
    assert not broken, broken


def test_readme_test_command_is_what_ci_runs() -> None:
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    ci = (ROOT / ".ci" / "run").read_text(encoding="utf-8")
    block = re.search(r"## Set-up.*?```bash\n(.*?)```", readme, re.S)
    assert block, "README has no set-up block"
    commands = [ln for ln in block.group(1).splitlines() if ln.strip()]
    assert len(commands) == 2, commands
    install, tests = commands
    assert "torch==2.13.0" in install and "deltascope demo" in install
    assert tests in ci.splitlines(), f"CI does not run the README's test command {tests!r}"
    assert "pip install --quiet torch==2.13.0" in ci  # the CPU pin comes first
    assert ci.index("torch==2.13.0") < ci.index('-e ".[dev]"')


def test_import_stays_cheap() -> None:
    """matplotlib, the Hub client and scipy load only when a feature needs them."""
    code = (
        "import sys, deltascope; "
        "print(sorted(m for m in ('matplotlib', 'huggingface_hub', 'scipy') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]", out.stdout

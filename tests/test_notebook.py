"""examples/quickstart.ipynb runs top to bottom (offline, on the demo pair) in a fresh
kernel of this very Python, and every plot cell shows a figure: the notebook cannot rot."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

nbformat = pytest.importorskip("nbformat")
nbclient = pytest.importorskip("nbclient")
pytest.importorskip("ipykernel")

NOTEBOOK = Path(__file__).resolve().parents[1] / "examples" / "quickstart.ipynb"


def test_quickstart_notebook_runs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # A kernelspec named python3 that runs this interpreter (the venv's), found first on
    # JUPYTER_PATH: a user-level python3 kernel pointing elsewhere cannot hijack the test.
    spec_dir = tmp_path / "jupyter" / "kernels" / "python3"
    spec_dir.mkdir(parents=True)
    argv = [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"]
    spec = {"argv": argv, "display_name": "Python 3 (deltascope tests)", "language": "python"}
    (spec_dir / "kernel.json").write_text(json.dumps(spec))
    monkeypatch.setenv("JUPYTER_PATH", str(tmp_path / "jupyter"))
    monkeypatch.setenv("JUPYTER_RUNTIME_DIR", str(tmp_path / "runtime"))
    monkeypatch.setenv("IPYTHONDIR", str(tmp_path / "ipython"))
    monkeypatch.setenv("MPLCONFIGDIR", str(tmp_path / "mpl"))
    monkeypatch.setenv("DELTASCOPE_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("MPLBACKEND", "module://matplotlib_inline.backend_inline")
    monkeypatch.delenv("DELTASCOPE_NO_PROGRESS", raising=False)

    nb = nbformat.read(NOTEBOOK, as_version=4)
    client = nbclient.NotebookClient(
        nb, kernel_name="python3", timeout=180, resources={"metadata": {"path": str(tmp_path)}}
    )
    client.execute()  # raises CellExecutionError on the first failing cell

    code = [c for c in nb.cells if c.cell_type == "code"]
    rich = [o["data"] for o in code[0].outputs if "data" in o]
    assert rich and "bit-identical" in rich[0]["text/html"]
    for cell in code:
        assert not any(o.get("output_type") == "error" for o in cell.outputs)
        if ".plot." in cell.source or "compare_runs(" in cell.source:
            kinds = [k for o in cell.outputs for k in o.get("data", {})]
            assert "image/png" in kinds, f"no figure shown for: {cell.source!r}"
    last = "".join(o.get("text", "") for o in code[-1].outputs)
    assert "report.html" in last and "KiB" in last
    assert (tmp_path / "cache").is_dir()  # the demo pair went to the test's cache, not the user's

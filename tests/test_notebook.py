"""The notebook runs headless, so it cannot rot."""

from pathlib import Path

import nbformat
import pytest
from nbclient import NotebookClient

NOTEBOOK = Path(__file__).resolve().parent.parent / "notebooks" / "strategy_comparison.ipynb"


@pytest.mark.slow
def test_strategy_comparison_notebook_runs(tmp_path, monkeypatch, tiny_model):
    monkeypatch.setenv("PROSPECT_MODEL", str(tiny_model))
    monkeypatch.setenv("PROSPECT_NB_MAX_FRAMES", "6")
    nb = nbformat.read(NOTEBOOK, as_version=4)
    NotebookClient(nb, timeout=600, kernel_name="python3", resources={"metadata": {"path": str(tmp_path)}}).execute()
    outputs = [o for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", [])]
    assert not [o for o in outputs if o.output_type == "error"]
    text = "".join(o.get("text", "") for o in outputs if o.output_type == "stream")
    assert "best F1:" in text
    images = [o for o in outputs if o.output_type == "display_data" and "image/png" in o.get("data", {})]
    assert len(images) == 3
    md = [o for o in outputs if o.output_type == "execute_result" and "text/markdown" in o.get("data", {})]
    assert md and "| drop_middle |" in md[0]["data"]["text/markdown"]

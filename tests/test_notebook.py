"""notebooks/quickstart.ipynb runs top to bottom (against the tiny checkpoint) so that it never rots."""
from __future__ import annotations

from pathlib import Path

import nbformat
from nbclient import NotebookClient

NOTEBOOK = Path(__file__).resolve().parents[1] / "notebooks" / "quickstart.ipynb"


def test_quickstart_notebook_executes(trained_tiny, tmp_path, monkeypatch):
    monkeypatch.setenv("AMADEUS_CHECKPOINT", str(trained_tiny[1]))
    monkeypatch.setenv("AMADEUS_NOTEBOOK_NOTES", "48")
    monkeypatch.setenv("AMADEUS_NOTEBOOK_OUT", str(tmp_path))
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    monkeypatch.setenv("MPLBACKEND", "Agg")
    nb = nbformat.read(NOTEBOOK, as_version=4)
    NotebookClient(nb, timeout=120, kernel_name="python3", resources={"metadata": {"path": str(NOTEBOOK.parent)}}).execute()
    outputs = [o for cell in nb.cells if cell.cell_type == "code" for o in cell.get("outputs", [])]
    assert not [o for o in outputs if o.output_type == "error"]
    images = [o for o in outputs if "image/png" in o.get("data", {})]
    assert len(images) >= 3  # generated, controlled and continued piano rolls
    text = "".join(o.get("text", "") for o in outputs if o.output_type == "stream")
    assert "notes/s" in text and "syntax errors" in text
    assert "{'instrument=piano,violin': 0, 'tempo=96': 0" in text  # every note obeys the controls
    assert any("audio/wav" in o.get("data", {}) or "text/html" in o.get("data", {}) for o in outputs) \
        or "no soundfont" in text

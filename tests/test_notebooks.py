"""Every notebook under notebooks/ runs top to bottom without error (its cells assert results)."""

import glob
import os

import nbformat
import pytest
from nbclient import NotebookClient

from configs_loader import REPO_ROOT

pytestmark = pytest.mark.slow

NOTEBOOKS = sorted(glob.glob(os.path.join(REPO_ROOT, "notebooks", "*.ipynb")))


@pytest.mark.parametrize("path", NOTEBOOKS, ids=os.path.basename)
def test_notebook_runs(path, monkeypatch):
  # The notebook sets its own device count; don't hand it the test process's 8-device flag twice.
  monkeypatch.delenv("XLA_FLAGS", raising=False)
  notebook = nbformat.read(path, as_version=4)
  # Raises CellExecutionError (with the cell and traceback) if any cell fails or asserts.
  NotebookClient(notebook, timeout=600, kernel_name="python3",
                 resources={"metadata": {"path": os.path.dirname(path)}}).execute()

"""The notebooks' conventions, and the machinery notebook run top to bottom.

Every notebook under notebooks/ is stored without outputs, opens with a parameter cell (tagged
"parameters", tiny defaults) and is executed by a test of its own, tests/test_notebook_<name>.py,
which asserts on the SUMMARY the notebook computes (tests/notebook_runner.py).
"""

import glob
import os

import nbformat
import pytest

import notebook_runner
from configs_loader import REPO_ROOT

NOTEBOOKS = sorted(glob.glob(os.path.join(notebook_runner.NOTEBOOK_DIR, "*.ipynb")))


def test_there_are_notebooks():
  assert len(NOTEBOOKS) >= 1, notebook_runner.NOTEBOOK_DIR


@pytest.mark.parametrize("path", NOTEBOOKS, ids=os.path.basename)
def test_notebook_is_stored_without_outputs_and_opens_with_parameters(path):
  notebook = nbformat.read(path, as_version=4)
  nbformat.validate(notebook)
  assert notebook.metadata.get("kernelspec", {}).get("name") == "python3", notebook.metadata
  code = [cell for cell in notebook.cells if cell.cell_type == "code"]
  stale = [index for index, cell in enumerate(code) if cell.outputs or cell.execution_count is not None]
  assert not stale, f"code cells {stale} carry outputs; strip them before committing"
  notebook_runner.parameter_cell_index(notebook)  # raises unless the first code cell is tagged
  assert "WORKDIR" in code[0].source or os.path.basename(path) == "debug_machinery.ipynb", (
      "the parameter cell names where the notebook writes (WORKDIR), so tests can point it elsewhere")


@pytest.mark.parametrize("path", NOTEBOOKS, ids=os.path.basename)
def test_every_notebook_is_executed_by_a_test(path):
  name = os.path.splitext(os.path.basename(path))[0]
  test_file = os.path.join(REPO_ROOT, "tests", f"test_notebook_{name}.py")
  if name == "debug_machinery":
    return  # run below
  assert os.path.isfile(test_file), f"{name}.ipynb has no test; expected {test_file}"
  with open(test_file) as f:
    assert f'run_notebook("{name}"' in f.read(), f"{test_file} does not execute {name}.ipynb"


@pytest.mark.slow
def test_debug_machinery_trains_on_an_8_device_mesh():
  summary, seconds = notebook_runner.run_notebook("debug_machinery")
  print(f"debug_machinery.ipynb: {seconds:.1f} s")
  assert summary["devices"] == 8
  assert summary["last_loss"] < 0.25 * summary["first_loss"], summary

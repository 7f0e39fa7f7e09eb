"""Runs a notebook under notebooks/ the way a user would (a fresh kernel, top to bottom) and hands
the test the values it computed.

    summary, seconds = run_notebook("fast_tokenizer", parameters={"WORKDIR": str(tmp_path)})

The notebook's first code cell is its parameter cell (tagged "parameters", papermill's
convention): its defaults are the tiny sizes the tests run; a user points the same cell at real
checkpoints. `parameters` are assigned in a cell inserted right after it, so tests override a
workdir or a size without editing the notebook. The notebook collects what it measured in a dict
named SUMMARY; a cell appended here prints it as JSON, and the test asserts on it.

`python tests/notebook_runner.py --strip` (`make strip-notebooks`) removes the outputs of every
notebook, as they are stored in git.
"""

import glob
import json
import os
import sys
import time

import nbformat
from nbclient import NotebookClient

from configs_loader import REPO_ROOT

NOTEBOOK_DIR = os.path.join(REPO_ROOT, "notebooks")
_MARKER = "NOTEBOOK_SUMMARY_JSON="


def notebook_path(name: str) -> str:
  return os.path.join(NOTEBOOK_DIR, f"{name}.ipynb")


def parameter_cell_index(notebook) -> int:
  """The index of the first code cell, which must be tagged "parameters"."""
  for index, cell in enumerate(notebook.cells):
    if cell.cell_type == "code":
      if "parameters" not in cell.metadata.get("tags", []):
        raise AssertionError("the first code cell must be the parameter cell, tagged 'parameters'")
      return index
  raise AssertionError("the notebook has no code cell")


def run_notebook(name: str, parameters: dict | None = None, timeout: float = 900) -> tuple[dict, float]:
  """Executes notebooks/<name>.ipynb; returns (its SUMMARY dict, wall seconds)."""
  notebook = nbformat.read(notebook_path(name), as_version=4)
  index = parameter_cell_index(notebook)
  if parameters:
    assignments = "\n".join(f"{key} = {value!r}" for key, value in parameters.items())
    notebook.cells.insert(index + 1, nbformat.v4.new_code_cell("# Injected by the test\n" + assignments))
  notebook.cells.append(nbformat.v4.new_code_cell(
      f"import json as _json\nprint({_MARKER!r} + _json.dumps(SUMMARY, default=float))"))
  # The kernel inherits the test process's environment; the notebooks choose their own devices.
  saved = os.environ.pop("XLA_FLAGS", None)
  start = time.perf_counter()
  try:
    # Raises CellExecutionError (naming the cell, with its traceback) if any cell fails or asserts.
    NotebookClient(notebook, timeout=timeout, kernel_name="python3",
                   resources={"metadata": {"path": NOTEBOOK_DIR}}).execute()
  finally:
    if saved is not None:
      os.environ["XLA_FLAGS"] = saved
  seconds = time.perf_counter() - start
  for output in notebook.cells[-1].outputs:
    for line in output.get("text", "").splitlines():
      if line.startswith(_MARKER):
        return json.loads(line[len(_MARKER):]), seconds
  raise AssertionError(f"{name}.ipynb printed no SUMMARY: {notebook.cells[-1].outputs}")


def strip_outputs(path: str) -> bool:
  """Removes a notebook's outputs and execution counts in place; returns whether anything changed."""
  notebook = nbformat.read(path, as_version=4)
  changed = False
  for cell in notebook.cells:
    if cell.cell_type == "code" and (cell.outputs or cell.execution_count is not None):
      cell.outputs, cell.execution_count, changed = [], None, True
  if changed:
    nbformat.write(notebook, path)
  return changed


if __name__ == "__main__":
  if sys.argv[1:] != ["--strip"]:
    sys.exit("usage: python tests/notebook_runner.py --strip   (strips the outputs of notebooks/*.ipynb)")
  for path in sorted(glob.glob(os.path.join(NOTEBOOK_DIR, "*.ipynb"))):
    print(("stripped " if strip_outputs(path) else "clean    ") + os.path.relpath(path, REPO_ROOT))

"""The package's dependency graph, read from the source: subpackages form no cycle, the low layers
never reach up (models/ and fast/ import nothing from train/, rl/, data/; rl/ nothing from
train/; nothing below serving/ imports it), and no module hides a dependency on another of the
package's modules inside a function (function-local imports are kept for heavy optional
libraries only)."""

import ast
import os

import pytest

from configs_loader import REPO_ROOT

PACKAGE = "roboalign_jax"
ROOT = os.path.join(REPO_ROOT, PACKAGE)
FORBIDDEN = {"models": {"train", "rl", "data", "policies", "demo", "eval", "serving"},
             "fast": {"train", "rl", "data", "models", "policies", "demo", "eval", "serving"},
             "parallel": {"train", "rl", "data", "models", "policies", "demo", "eval", "fast", "serving"},
             "rl": {"train", "policies", "demo", "serving"},
             "data": {"train", "rl", "policies", "demo", "serving"},
             "policies": {"train", "rl", "demo", "serving"},
             # The server wraps a loaded Policy; it neither trains nor evaluates.
             "serving": {"train", "rl", "demo", "eval"}}


def _modules():
  for directory, _, files in os.walk(ROOT):
    for name in files:
      if name.endswith(".py"):
        path = os.path.join(directory, name)
        relative = os.path.relpath(path, REPO_ROOT)[:-3].replace(os.sep, ".")
        yield relative.removesuffix(".__init__"), path


def _imports(path):
  """(imported module, line, is_top_level) for every import of the package's own modules."""
  tree = ast.parse(open(path).read(), path)
  top_level = {id(node) for node in tree.body}
  for node in ast.walk(tree):
    if isinstance(node, ast.Import):
      names = [alias.name for alias in node.names]
    elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
      names = [node.module] + [f"{node.module}.{alias.name}" for alias in node.names]
    else:
      continue
    for name in names:
      if name == PACKAGE or name.startswith(PACKAGE + "."):
        yield name, node.lineno, id(node) in top_level


def _subpackage(module):
  parts = module.split(".")
  return parts[1] if len(parts) > 1 else None


@pytest.fixture(scope="module")
def graph():
  edges, local = {}, []
  for module, path in _modules():
    for name, line, top in _imports(path):
      source, target = _subpackage(module), _subpackage(name)
      if not top:
        local.append(f"{os.path.relpath(path, REPO_ROOT)}:{line} imports {name} inside a function")
      if source and target and source != target:
        edges.setdefault(source, set()).add(target)
  return edges, local


def test_no_function_local_imports_of_the_package(graph):
  _, local = graph
  assert not local, "\n".join(local)


def test_lower_layers_do_not_import_upper_ones(graph):
  edges, _ = graph
  bad = [f"{source} -> {target}" for source, forbidden in FORBIDDEN.items() for target in edges.get(source, ())
         if target in forbidden]
  assert not bad, bad


def test_subpackages_form_no_cycle(graph):
  edges, _ = graph
  state = {}

  def visit(node, trail):
    state[node] = "open"
    for nxt in sorted(edges.get(node, ())):
      if state.get(nxt) == "open":
        raise AssertionError(f"import cycle: {' -> '.join(trail + [node, nxt])}")
      if nxt not in state:
        visit(nxt, trail + [node])
    state[node] = "done"

  for node in sorted(edges):
    if node not in state:
      visit(node, [])


# Each simulator side runs in its own environment without JAX or the training package's
# dependencies: LIBERO in .venv-libero (numpy, LIBERO, robosuite, MuJoCo, imageio, openpi-client, tqdm);
# Meta-World in .venv-metaworld (numpy, metaworld, MuJoCo, imageio, openpi-client, tqdm);
# CALVIN where the benchmark is installed (its calvin_env, hydra and omegaconf, openpi-client).
SIM_SIDE = {"libero": {"numpy", "libero", "robosuite", "mujoco", "imageio", "openpi_client", "tqdm"},
            "metaworld": {"numpy", "metaworld", "mujoco", "imageio", "openpi_client", "tqdm"},
            "calvin": {"numpy", "calvin_env", "hydra", "omegaconf", "openpi_client"}}
# Importing roboalign_jax.eval.<simulator>.* executes these package __init__ files first.
SIM_PARENTS = ("__init__.py", os.path.join("eval", "__init__.py"))
# Simulator-agnostic harness modules the simulator sides may share; they may import only the
# standard library and numpy.
SIM_SHARED = {f"{PACKAGE}.eval.closed_loop", f"{PACKAGE}.eval.jsonl_log"}


def _all_imports(path):
  """(module, line) of every import in the file; `from a.b import c` gives "a.b.c" when a.b.c is a
  module of the package, else "a.b"; relative imports keep their dots."""
  tree = ast.parse(open(path).read(), path)
  for node in ast.walk(tree):
    if isinstance(node, ast.Import):
      for alias in node.names:
        yield alias.name, node.lineno
    elif isinstance(node, ast.ImportFrom):
      if node.level:
        yield "." * node.level + (node.module or ""), node.lineno
        continue
      for alias in node.names:
        full = f"{node.module}.{alias.name}"
        is_module = os.path.exists(os.path.join(REPO_ROOT, *full.split(".")) + ".py") or os.path.isdir(
            os.path.join(REPO_ROOT, *full.split(".")))
        yield (full if full.startswith(PACKAGE + ".") and is_module else node.module), node.lineno


@pytest.mark.parametrize("simulator", sorted(SIM_SIDE))
def test_simulator_side_imports_only_its_own_environment(simulator):
  import sys
  allowed = SIM_SIDE[simulator] | set(sys.stdlib_module_names) | {"__future__"}
  own = f"{PACKAGE}.eval.{simulator}"
  directory = os.path.join(ROOT, "eval", simulator)
  assert os.path.isdir(directory), f"{directory} is missing"
  bad = []
  for name in sorted(os.listdir(directory)):
    if not name.endswith(".py"):
      continue
    path = os.path.join(directory, name)
    for module, line in _all_imports(path):
      where = f"{os.path.relpath(path, REPO_ROOT)}:{line} imports {module}"
      if module.startswith("."):
        bad.append(where + " (relative; use the absolute name)")
      elif module == PACKAGE or module.startswith(PACKAGE + "."):
        if not (module == own or module.startswith(own + ".") or module in SIM_SHARED):
          bad.append(where + f" (outside {own} and {sorted(SIM_SHARED)})")
      elif module.split(".")[0] not in allowed:
        bad.append(where + f" (not in the simulator environment: {sorted(SIM_SIDE[simulator])} + stdlib)")
  light = set(sys.stdlib_module_names) | {"__future__"}
  for parent in SIM_PARENTS:
    path = os.path.join(ROOT, parent)
    for module, line in _all_imports(path):
      if module.split(".")[0] not in light:
        bad.append(f"{os.path.relpath(path, REPO_ROOT)}:{line} imports {module} (runs on import of {own})")
  for shared in sorted(SIM_SHARED):
    path = os.path.join(REPO_ROOT, *shared.split(".")) + ".py"
    if not os.path.isfile(path):
      continue
    for module, line in _all_imports(path):
      if module.split(".")[0] not in light | {"numpy"}:
        bad.append(f"{os.path.relpath(path, REPO_ROOT)}:{line} imports {module} (shared with the simulator "
                   "side: standard library and numpy only)")
  assert not bad, "\n".join(bad)

"""The package's shape: no import cycles, TensorFlow kept out of the model and
step code, the package root holding only the commands (plus `config` and
`backend`), no library importing a command, and behaviour kept across
restructurings (a checkpoint written by the code before the package was
restructured evaluates to the same scores)."""

import ast
import csv
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "cmfl_jax"
FIXTURE = ROOT / "tests" / "fixtures" / "smoke_v0"
TF_FREE = ("cmfl_jax.models", "cmfl_jax.training.steps", "cmfl_jax.training.losses",
           "cmfl_jax.backend", "cmfl_jax.evaluation.metrics", "cmfl_jax.data.split",
           "cmfl_jax.data.readers")
#: What a person runs (`python -m cmfl_jax.X`): the only modules at the root
#: besides the config schema, the platform module and the package itself.
ROOT_COMMANDS = {"main", "predict", "calibrate", "explain", "export", "serve", "align", "audit",
                 "convert"}
ROOT_LIBRARIES = {"config", "backend", "__init__"}


def module_name(path: Path) -> str:
  parts = path.relative_to(ROOT).with_suffix("").parts
  return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def import_graph() -> dict[str, set[str]]:
  """module -> modules it imports (anywhere in its body, functions included);
  project modules by name, third-party ones by their top-level name."""
  files = {module_name(p): p for p in PACKAGE.rglob("*.py")}
  graph = {}
  for name, path in files.items():
    edges = set()
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    for node in ast.walk(ast.parse(path.read_text())):
      if isinstance(node, ast.Import):
        targets = [a.name for a in node.names]
      elif isinstance(node, ast.ImportFrom):
        base = node.module or ""
        if node.level:
          base = ".".join(package.split(".")[:len(package.split(".")) - node.level + 1]
                          + ([base] if base else []))
        targets = [f"{base}.{a.name}" if f"{base}.{a.name}" in files else base for a in node.names]
      else:
        continue
      for t in targets:
        if t.startswith("cmfl_jax"):
          while t not in files:  # cmfl_jax.x.attr -> cmfl_jax.x
            t = t.rpartition(".")[0]
          edges.add(t)
        else:
          edges.add(t.split(".")[0])
    edges.discard(name)
    graph[name] = edges
  return graph


def test_no_import_cycles():
  graph = import_graph()
  state, path = {}, []

  def visit(node):
    state[node] = "open"
    path.append(node)
    for nxt in sorted(graph.get(node, ())):
      if nxt not in graph:
        continue
      if state.get(nxt) == "open":
        cycle = path[path.index(nxt):] + [nxt]
        pytest.fail("import cycle: " + " -> ".join(cycle))
      if nxt not in state:
        visit(nxt)
    path.pop()
    state[node] = "done"

  for node in sorted(graph):
    if node not in state:
      visit(node)
  assert len(graph) > 30  # the walk found the package


def test_models_steps_and_losses_never_import_tensorflow():
  graph = import_graph()
  for start in [m for m in graph if m.startswith(TF_FREE)]:
    seen, todo = set(), [start]
    while todo:
      node = todo.pop()
      for nxt in graph.get(node, ()):
        assert nxt not in ("tensorflow", "tensorflow_datasets"), (
            f"{start} imports TensorFlow through {node}")
        if nxt in graph and nxt not in seen:
          seen.add(nxt)
          todo.append(nxt)
  code = ("import sys, cmfl_jax.training.steps, cmfl_jax.models, cmfl_jax.data.split; "
          "print('tensorflow' in sys.modules)")
  out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True,
                       env=dict(os.environ, JAX_PLATFORMS="cpu"), check=True).stdout
  assert out.strip() == "False"


def is_entry_point(path: Path) -> bool:
  """A module a person runs with `python -m`: a `__main__.py` or one with an
  `if __name__ == "__main__":` block."""
  if path.name == "__main__.py":
    return True
  return any(isinstance(node, ast.If) and isinstance(node.test, ast.Compare)
             and isinstance(node.test.left, ast.Name) and node.test.left.id == "__name__"
             for node in ast.parse(path.read_text()).body)


def commands() -> set[str]:
  """The commands: every module at the root but `config`, `backend` and the
  package itself, and every other entry point (`python -m cmfl_jax.bench`,
  `cmfl_jax.tools.durall`, `cmfl_jax.explanations.planted`, ...): side
  tools are run, not imported, whatever room they sit in."""
  found = {module_name(p) for p in PACKAGE.glob("*.py") if p.stem not in ROOT_LIBRARIES}
  return found | {module_name(p) for p in PACKAGE.rglob("*.py") if is_entry_point(p)}


def test_the_root_holds_only_commands_config_and_backend():
  """Libraries live in rooms (training/, evaluation/, scoring/, data/, ...);
  the root lists what a person runs."""
  root = {p.stem for p in PACKAGE.glob("*.py")}
  assert root - ROOT_LIBRARIES == ROOT_COMMANDS, (
      f"at the package root, not a command: {sorted(root - ROOT_LIBRARIES - ROOT_COMMANDS)}; "
      f"missing: {sorted(ROOT_COMMANDS - root)}")
  for name in ROOT_COMMANDS:
    assert is_entry_point(PACKAGE / f"{name}.py"), f"cmfl_jax.{name} has no __main__ block"


def test_no_library_imports_a_command():
  """A command is flags, hand-off and output; what two commands share lives
  in a library, so no module imports a command (commands included)."""
  graph, entry_points = import_graph(), commands()
  assert {"cmfl_jax.predict", "cmfl_jax.bench.__main__", "cmfl_jax.tools.durall"} <= entry_points
  wrong = sorted(f"{name} imports {target}" for name, edges in graph.items()
                 for target in edges & entry_points)
  assert not wrong, "; ".join(wrong)


def test_checkpoint_from_before_the_restructuring_scores_identically(tmp_path):
  """tests/fixtures/smoke_v0: configs/smoke.py trained for 3 epochs by the code
  of commit 0d9fd20 (before the package was restructured), with the score
  files it wrote; today's code must read it and write the same scores."""
  workdir = tmp_path / "run"
  shutil.copytree(FIXTURE / "checkpoints", workdir / "checkpoints")
  env = dict(os.environ, JAX_PLATFORMS="cpu", TF_CPP_MIN_LOG_LEVEL="2")
  proc = subprocess.run(
      [sys.executable, "-m", "cmfl_jax.main", f"--config={ROOT}/configs/smoke.py",
       f"--workdir={workdir}", "--mode=eval", "--config.train.num_epochs=3"],
      cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
  assert proc.returncode == 0, proc.stderr[-3000:]
  for name in ("eval_scores.csv", "eval_scores_rgb.csv", "eval_scores_freq.csv",
               "eval@jpeg50_scores.csv"):
    # Same rows and scores; the scores to float32 rounding, which differs with
    # the XLA:CPU build and the processor's vector units (a 6e-8 change seen).
    new, old = (list(csv.DictReader(open(d / name))) for d in (workdir / "eval" / "best_12",
                                                                FIXTURE))
    assert [{k: v for k, v in r.items() if k != "score"} for r in new] == [
        {k: v for k, v in r.items() if k != "score"} for r in old], name
    np.testing.assert_allclose([float(r["score"]) for r in new],
                               [float(r["score"]) for r in old], rtol=0, atol=1e-6, err_msg=name)

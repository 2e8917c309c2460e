"""The package's shape: no import cycles, TensorFlow kept out of the model and
step code, and behaviour kept across restructurings (a checkpoint written by
the code before the package was restructured evaluates to the same scores)."""

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
TF_FREE = ("cmfl_jax.models", "cmfl_jax.steps", "cmfl_jax.losses", "cmfl_jax.backend",
           "cmfl_jax.metrics", "cmfl_jax.data.split", "cmfl_jax.data.readers")


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
  code = ("import sys, cmfl_jax.steps, cmfl_jax.models, cmfl_jax.data.split; "
          "print('tensorflow' in sys.modules)")
  out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True,
                       env=dict(os.environ, JAX_PLATFORMS="cpu"), check=True).stdout
  assert out.strip() == "False"


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

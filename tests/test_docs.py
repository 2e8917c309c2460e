"""What README and docs tell a reader to run or open exists: every
`python -m cmfl_jax.X` answers `--help`, every relative link reaches a file
(and a heading, where it names one), and README's test command is the one CI
runs."""

import os
import re
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DOCS = [ROOT / "README.md", ROOT / "BENCHMARKS.md", ROOT / "launch" / "README.md",
        *sorted((ROOT / "docs").glob("*.md"))]
# `python -m cmfl_jax.X`, also split over two lines or after `.venv/bin/`.
COMMAND = re.compile(r"python3?\s+-m\s+(cmfl_jax(?:\.[A-Za-z_]\w*)*)")
LINK = re.compile(r"!?\[[^\]]*\]\(([^)\s]+)\)")
FENCE = re.compile(r"^```.*?^```", re.S | re.M)


def commands() -> dict[str, list[str]]:
  """module -> the docs that name it."""
  named: dict[str, list[str]] = {}
  for doc in DOCS:
    for module in COMMAND.findall(doc.read_text()):
      named.setdefault(module, [])
      if doc.name not in named[module]:
        named[module].append(str(doc.relative_to(ROOT)))
  return named


def answers_help(module: str) -> str | None:
  """None if `python -m module --help` prints its usage, else why not."""
  env = dict(os.environ, PYTHONPATH=os.pathsep.join(
      [str(ROOT), *filter(None, [os.environ.get("PYTHONPATH")])]),
      CMFL_JAX_TUNE_MALLOC="0", JAX_PLATFORMS="cpu")
  try:
    proc = subprocess.run([sys.executable, "-m", module, "--help"], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=120)
  except subprocess.TimeoutExpired:
    return "no answer to --help within 120 s"
  # absl's --help prints the usage to stdout and exits 1; argparse exits 0.
  absl_help = proc.returncode == 1 and "Try --helpfull" in proc.stdout
  if (proc.returncode == 0 or absl_help) and "Traceback" not in proc.stderr \
      and "--" in proc.stdout:
    return None
  return f"exit {proc.returncode}: {(proc.stderr or proc.stdout).strip()[-300:]}"


def test_docs_name_the_commands():
  named = commands()
  assert {"cmfl_jax.main", "cmfl_jax.predict", "cmfl_jax.serve"} <= set(named)


def test_every_named_command_answers_help():
  named = commands()
  with ThreadPoolExecutor(max_workers=min(4, os.cpu_count() or 1)) as pool:
    answers = dict(zip(named, pool.map(answers_help, named)))
  failures = [f"python -m {m} (named in {', '.join(named[m])}): {why}"
              for m, why in sorted(answers.items()) if why]
  assert not failures, "\n".join(failures)


def anchors(doc: Path) -> set[str]:
  """GitHub's heading anchors: lower case, punctuation dropped, spaces -> '-'."""
  text = FENCE.sub("", doc.read_text())
  return {re.sub(r"[^\w\- ]", "", h.strip().lower()).replace(" ", "-")
          for h in re.findall(r"^#+\s+(.*)$", text, re.M)}


def test_relative_links_reach_files_and_headings():
  broken = []
  for doc in DOCS:
    for target in LINK.findall(FENCE.sub("", doc.read_text())):
      if re.match(r"[a-z]+:", target):  # http:, https:, mailto:
        continue
      path, _, anchor = target.partition("#")
      file = (doc.parent / path).resolve() if path else doc
      where = f"{doc.relative_to(ROOT)}: ({target})"
      if not file.exists():
        broken.append(f"{where}: no file {path}")
      elif anchor and file.suffix == ".md" and anchor not in anchors(file):
        broken.append(f"{where}: no heading #{anchor}")
  assert not broken, "\n".join(broken)


def test_readme_test_command_is_what_ci_runs():
  readme = (ROOT / "README.md").read_text()
  blocks = re.findall(r"```bash\n(.*?)```", readme, re.S)
  test_command = next(b.strip() for b in blocks if "pytest" in b)
  main_command = next(b.strip() for b in blocks if "cmfl_jax.main" in b)
  ci_lines = [line.strip() for line in (ROOT / ".ci" / "run").read_text().splitlines()]
  assert test_command in ci_lines
  assert main_command.startswith("python3 -m venv .venv && .venv/bin/pip install -e . ")
  assert main_command.endswith("-m cmfl_jax.main --config=configs/cross_model.py")

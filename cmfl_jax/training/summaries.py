"""What a run tells people as it goes: TensorBoard scalars, the jsonl log,
the progress bar. Process 0 only; the other processes get no-ops."""

from __future__ import annotations

import json
import os
from typing import Any

import jax
import tensorflow as tf


def is_main_process() -> bool:
  return jax.process_index() == 0


def summary_writer(workdir: str):
  """TensorBoard writer (TensorFlow's, already a dependency); None off process 0."""
  if not is_main_process():
    return None
  return tf.summary.create_file_writer(os.path.join(workdir, "tensorboard"))


def write_scalars(writer, step: int, scalars: dict[str, float]) -> None:
  if writer is None:
    return
  with writer.as_default(step=step):
    for k, v in scalars.items():
      tf.summary.scalar(k, v)
  writer.flush()


def jsonl_path(workdir: str, name: str = "train_log.jsonl") -> str | None:
  """Where the run's jsonl log goes; None off process 0."""
  return os.path.join(workdir, name) if is_main_process() else None


def append_jsonl(path: str | None, record: dict[str, Any]) -> None:
  if path is None:
    return
  with tf.io.gfile.GFile(path, "a") as f:
    f.write(json.dumps(record) + "\n")


def progress(total: int, initial: int, desc: str, enabled: bool):
  from tqdm import tqdm
  return tqdm(total=total, initial=initial, desc=desc, unit="step", dynamic_ncols=True,
              disable=not (enabled and is_main_process()))

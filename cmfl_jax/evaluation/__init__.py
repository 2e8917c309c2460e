"""Evaluation: scores over whole splits from a checkpoint (`evaluate`), the
metrics (`metrics`) and their statistics (`stats`), the official score files
(`score_files`), the report (`report`) and sweeps of training runs with one
combined report (`sweep`)."""

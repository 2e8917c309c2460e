"""Scoring with a trained model, shared by the predict, serve, explain and
calibrate commands: the model from a checkpoint or an export (`model`), image
files and aligned faces as its inputs (`files`, `faces`), rows scored in
padded batches (`rows`), verdicts (`decisions`) and explanation maps of files
(`explain_files`)."""

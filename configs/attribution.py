"""Which generator made it: the two_stream + CMFL detector with the
attribution head, on the embedded benchmark. Bona fide plus three families
are known in training (progan, stylegan2, diffusion); the other three
(dcgan, stylegan3, swagan) are unseen and must come out "unknown".

Every family's eval split is scored, so the report has the detection table
for all six, the closed-set attribution accuracy on the known three and the
open-set AUROC per unseen family (cmfl_jax/attribution). ~13 min end to end
on 2 CPU cores, cold (BENCHMARKS.md "Attribution"). Choose other known
families with --config.data.train_split / val_split.
"""

import os
import runpy

_cross_model = runpy.run_path(os.path.join(os.path.dirname(__file__), "cross_model.py"))

KNOWN = ("progan", "stylegan2", "diffusion")


def get_config():
  config = _cross_model["get_config"]()
  data = config.data
  data.train_split = "real_train+" + "+".join(f"{f}_train" for f in KNOWN)
  data.val_split = "real_dev+" + "+".join(f"{f}_dev" for f in KNOWN)
  config.attribution.enabled = True
  # The detection and robustness tables stay those of cross_model.py on a
  # known family; the frequency explanations are left to cross_model.py.
  config.eval.robustness_splits = ("real_eval+stylegan2_eval",)
  config.eval.conditions = ("jpeg:70", "blur:1", "resize:0.5")
  config.eval.explain_frequencies = False
  config.train.num_epochs = 1
  return config

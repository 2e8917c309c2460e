"""Explanations of both streams, a library of maps: pixel and frequency
saliency (`saliency`, `gradcam`), the model seen per stream (`streams`),
sanity checks (`sanity`), radial profiles and pictures (`radial`,
`pictures`), the frequency section of the evaluation report (`frequencies`)
and the planted-trace test bed (`planted`). Explaining files with a trained
model is `cmfl_jax.scoring.explain_files`; the command is `cmfl_jax.explain`."""

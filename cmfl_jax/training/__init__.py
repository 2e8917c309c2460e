"""Training: the loss functions (`losses`), the compiled train and eval steps
over a device mesh (`steps`), Orbax checkpoints (`checkpointing`), the logs
(`summaries`) and the epoch loop around them (`loop`, `train_and_evaluate`).
`steps` and `losses` never import TensorFlow."""

"""Data: splits (`split`, no TensorFlow), reading user files (`readers`),
the table of sources (`sources`), TF image ops (`ops`), the tf.data pipeline
(`pipeline`), TFDS builders (`tfds_faces`, `synthetic`), the data audit
(`auditing`), faces from raw photographs (`face_geometry`: crop rules;
`face_detection`: one image; `aligned_crops`: many files, their crops and
manifest)."""

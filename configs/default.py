"""Paper hyper-parameters (Ibsen et al., IWBF 2024; official code defaults).

two_stream DenseNet-161 (through transition2) + CMFL, Adam lr 1e-4 with
coupled L2 1e-5 (PyTorch Adam `weight_decay`), 25 epochs, 224x224 inputs,
model kept = lowest validation loss. Data: protocol CSVs (set data_root and
protocol_dir). Paper baselines by override, e.g.
  --config.model.arch=one_stream --config.model.input=rgb --config.loss.objective=bce
  --config.model.arch=one_stream --config.model.input=freq --config.loss.objective=bce
  --config.model.arch=two_stream --config.loss.objective=bce
"""

import ml_collections
from ml_collections import config_dict


def get_config() -> ml_collections.ConfigDict:
  config = ml_collections.ConfigDict()
  config.seed = 0

  config.data = data = ml_collections.ConfigDict()
  data.source = "csv"                  # "csv" (official) | "folder" | "tfds" | "synthetic" | "toy"
  data.synthetic_config = "64"         # synthetic: "64" | "128" | "224" | "s<size>_t<n>_d<n>_e<n>",
                                       # optionally ":<version>" ("64:1.0.0"; default: latest, 2.0.0)
  data.data_root = ""                  # csv: filenames relative to it; folder: <root>/<split>/<gen>/
  data.tfds_name = "cmfl_faces"        # tfds: builder name (see cmfl_jax/tfds_faces.py)
  data.tfds_data_dir = ""              # tfds: prepared data dir ("" = TFDS default)
  data.protocol_dir = ""               # holds <split>.csv files
  data.train_split = "train"
  data.val_split = "dev"
  data.eval_splits = ("eval",)
  data.image_size = 224
  data.aligned = True                  # False: resize 256 + (random-resized|centre) crop
  data.balance = "oversample"          # "oversample" | "truncate" (official) | "none"
  data.augment_prob = 0.5              # blur and JPEG probabilities (paper: 0.5)
  # Up-front file check before training/evaluation; unusable files are skipped
  # and listed in data_report.json. "decode": every pixel once (finds truncated
  # or corrupt files before they break an epoch; for new or untrusted data).
  # "header": format and size only, no pixel decoded (finds missing, empty,
  # non-image, too small/large files, not damaged pixel data; for data already
  # checked, e.g. by an earlier "decode" start, or too large to decode up front).
  # "none": no check (trusted data). Verdicts are cached per file by (real path,
  # size, mtime) with the check's settings, so later starts, resumes and
  # evaluations re-check only new or changed files (a "decode" verdict also
  # answers "header"); in verify_cache ("" = the audit's file, below; ":memory:"
  # = no cache).
  data.verify = "decode"               # "decode" | "header" | "none"
  data.verify_cache = ""
  data.min_side = -1                   # smaller images are skipped and reported (-1: crop size)
  data.cache = False                   # decode all images once into RAM (one image size)
  data.max_pixels = 64_000_000         # larger ones too (decompression bombs)
  # Data audit at the start of training/evaluation (cmfl_jax/data/auditing/configured.py): storage
  # shortcuts (metadata-only classifier AUC above the threshold warns), duplicates,
  # subject overlap. Per-file results cached by (path, size, mtime) in audit_cache
  # ("" = ~/.cache/cmfl_jax/audit/metadata.sqlite, or under $XDG_CACHE_HOME; an
  # unusable location means no cache and one warning, never a failure); the whole
  # result is reused while the splits, files and settings are unchanged.
  data.audit = True
  data.audit_cache = ""
  data.audit_shortcut_threshold = 0.75
  data.audit_hamming = 8               # near-duplicates: pHash Hamming distance <= this
  # Re-encode every training image the same way before augmentation ("" = off,
  # "jpeg:Q"): the remedy when the audit finds a storage shortcut.
  data.reencode = ""
  # Processing randomised on both classes of every training image (issue #38;
  # cmfl_jax/data/randomize.py lists what it contains): "" = off, "all", or
  # groups "camera,resample,blur,jpeg", each with probability randomize_prob.
  # A fake made from a real (CSV column `made_from`, folder made_from.csv, the
  # benchmark's `<family>_recon|inpaint` splits) always gets its real's draws.
  data.randomize = ""
  data.randomize_prob = 0.5
  # The embedded benchmark only: leave training camera k (0-2) out of the train
  # split and validate on it alone (keep-best, dev threshold); -1 = off.
  data.holdout_camera = -1
  # Raw photographs (csv/folder sources): "align" | "box" detects and aligns every
  # image once (MTCNN, as `python -m cmfl_jax.align`; the align extra) into
  # align_dir ("" = ~/.cache/cmfl_jax/aligned); images without a face are listed.
  data.align = ""
  data.align_policy = "largest"        # "largest" | "most_confident" | "skip_multiple"
  data.align_size = 224
  data.align_dir = ""
  data.toy_seed = 0
  data.toy_sizes = {"default": 64}

  config.model = model = ml_collections.ConfigDict()
  model.arch = "two_stream"            # "two_stream" | "one_stream"
  model.input = "rgb"                  # one_stream input: "rgb" | "freq"
  model.backbone = "densenet161"
  model.num_blocks = 2                 # stop after transition2 -> 384 channels
  model.growth_rate = config_dict.placeholder(int)
  model.block_config = config_dict.placeholder(tuple)
  model.num_init_features = config_dict.placeholder(int)
  model.bn_size = config_dict.placeholder(int)
  model.dtype = "float32"              # compute dtype; "bfloat16" on accelerators
  model.ops = "auto"                   # "gemm" (CPU-tuned kernels) | "xla" (cuDNN on GPU) | "auto"
  model.cpu_matmul = "eigen"           # XLA:CPU matrix products: "eigen" | "ynnpack"
  # Initial weights for a fresh run from a local file (nothing is downloaded):
  # torchvision/timm densenet `.pth`/`.safetensors` (ImageNet; both streams, heads
  # stay random) or an official-code checkpoint (everything; fine-tuning). See docs/weights.md.
  model.pretrained = ""

  config.loss = loss = ml_collections.ConfigDict()
  loss.objective = "cmfl"              # "cmfl" | "bce"
  loss.alpha = 1.0
  loss.gamma = 3.0
  loss.multiplier = 2.0
  loss.attribution_weight = 0.5        # weight of the attribution head's cross-entropy

  # Which generator made it (cmfl_jax/attribution): a head on the fused embedding
  # predicting the source (bona fide or a training generator), trained with the
  # detection objective; off, the model and its checkpoints are as without it.
  config.attribution = attribution = ml_collections.ConfigDict()
  attribution.enabled = False
  attribution.classes = ()             # () = "bona_fide" + the training split's generators
  attribution.min_train_images = 32    # fewer training images for a class: config error
  # Every class weighs the same in the attribution loss (bona fide is half of
  # every epoch, each of K generators 1/(2K)); False: plain cross-entropy.
  attribution.class_balanced = True
  # Open-set "unknown generator": the energy score's threshold accepting this share
  # of the known-class dev images (cmfl_jax/attribution/openset.py).
  attribution.known_acceptance = 0.95

  config.optim = optim = ml_collections.ConfigDict()
  optim.learning_rate = 1e-4
  optim.weight_decay = 1e-5            # coupled L2, added to the gradient
  optim.b1 = 0.9
  optim.b2 = 0.999
  optim.eps = 1e-8

  config.train = train = ml_collections.ConfigDict()
  train.num_epochs = 25
  train.batch_size = 32                # global, over all devices and hosts
  train.eval_batch_size = 64
  # Validation each epoch on a fixed, seeded, class-stratified subset of the dev
  # split of this size (0 = all of it); the dev threshold, operating points and
  # calibration stored with `best` and the final `latest` are refitted on the
  # whole dev split when training ends.
  train.val_examples = 0
  train.log_every_steps = 50
  train.checkpoint_every_steps = 500   # periodic "latest" saves; also each epoch end
  train.max_steps = -1                 # > 0: stop early (smoke runs, benchmarks)
  train.progress_bar = True
  # SIGTERM/SIGINT: every process saves the same step and stops (exit 143/130).
  # With several processes a signal may reach one only; they agree (one tiny
  # all-gather) every this many steps and at every save and epoch end, so a stop
  # lands at most this many steps after the signal. One process stops after the
  # next step, with no collective.
  train.stop_check_every_steps = 10
  train.debug_signal_at_step = -1      # tests only: send debug_signal to self at this step
  train.debug_signal = 15              # 15 = SIGTERM (graceful), 9 = SIGKILL (hard kill)
  train.debug_signal_process = -1      # the process that signals itself (-1 = every one)

  config.eval = ev = ml_collections.ConfigDict()
  ev.checkpoint = "best"               # "best" | "latest" | a step number
  # Robustness: test-time post-processing, one report row per condition
  # ("jpeg:Q", "blur:SIGMA", "resize:FACTOR" down-up, "noise:STD" on 0-255).
  ev.conditions = ("jpeg:90", "jpeg:70", "jpeg:50", "blur:0.5", "blur:1", "blur:2",
                   "resize:0.5", "resize:0.75", "noise:2", "noise:5")
  ev.robustness_splits = ()            # subset of data.eval_splits; () = all of them
  # Uncertainty: stratified bootstrap (bona fide / attack resampled apart, seeded
  # by config.seed) intervals for every reported metric.
  ev.bootstrap_resamples = 1000
  ev.confidence = 0.95
  ev.calibration_bins = 15             # equal-width bins of P(real) for the ECE
  # Verdicts: the unsure band around the dev threshold is fitted so that the dev
  # images given a verdict have at most this error (cmfl_jax.verdicts.selective).
  ev.unsure_error = 0.05
  # Which frequencies the model uses per split (cmfl_jax/explanations/frequencies.py):
  # integrated gradients over the spectrum on a class-balanced subset of
  # explain_images per split, beside the bona fide - attack spectrum difference.
  ev.explain_frequencies = True
  ev.explain_images = 16
  ev.explain_steps = 8
  return config

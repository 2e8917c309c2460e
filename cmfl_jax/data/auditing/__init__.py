"""Data audit: does the storage give the label away, and do the splits leak?

Face-forgery detectors readily learn how files are stored instead of what they show
("PNG = fake" when the reals were JPEG; "JPEG q75 = real"), and splits leak through
shared subjects and (near-)duplicate images. This package reads per-file header
metadata (no full pixel decode), a content hash and a 64-bit perceptual hash (from a
reduced decode), caches them per file (and the whole result, reused while the splits,
every file's size and mtime and the parameters stay the same), and reports:

  * per split x class (and generator) storage summaries,
  * a shortcut score: cross-validated ROC AUC of a small classifier that sees only
    storage metadata, with a warning and a remedy above a threshold,
  * exact duplicates (sha1), near-duplicates (pHash Hamming distance, sub-quadratic
    multi-index search) and subject overlap, within and across splits,
  * unreadable files with reasons; nothing here stops on a bad file.

One module per concept: `splits` (what an audit is given), `jpeg_quality`
(quality from the quantisation table), `metadata` (per-file records, pHash,
the cache), `shortcut` (the metadata-only classifier), `duplicates` (exact and
near-duplicate search), `report` (`run_audit`, the log lines, audit.json and
audit.md). What callers use is exported here.

Label convention: 1 = bona fide, 0 = attack. The only other project module used is
`file_cache` (the per-file cache, shared with the up-front file check).
"""

from cmfl_jax.data.auditing.duplicates import hamming_pairs
from cmfl_jax.data.auditing.jpeg_quality import estimate_jpeg_quality, ijg_luma_table
from cmfl_jax.data.auditing.metadata import (CACHE_VERSION, MetadataCache, default_cache_path,
                                             phash, read_file_record, read_records)
from cmfl_jax.data.auditing.report import RESULT_VERSION, run_audit, summary_lines, write_audit
from cmfl_jax.data.auditing.shortcut import FEATURES, REMEDY, shortcut_score
from cmfl_jax.data.auditing.splits import CLASS_NAMES, AuditSplit

__all__ = [
    "AuditSplit", "CACHE_VERSION", "CLASS_NAMES", "FEATURES", "MetadataCache", "REMEDY",
    "RESULT_VERSION", "default_cache_path", "estimate_jpeg_quality", "hamming_pairs",
    "ijg_luma_table", "phash", "read_file_record", "read_records", "run_audit",
    "shortcut_score", "summary_lines", "write_audit",
]

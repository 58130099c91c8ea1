"""Teacher-output cache: run the teacher once, train many epochs (or students) from its stored outputs.

With only logit terms active (`alpha_hidden == alpha_attention == 0`), online distillation pays a
teacher forward pass on every step of every epoch, although a frozen teacher in eval mode gives
the same logits for the same inputs each time. `build_teacher_cache` runs it once over the
tokenized train split and stores its outputs as columns next to the data, in shards of Arrow
files (`Dataset.save_to_disk` per shard); `DistillationTrainer` reads those columns instead of
calling the teacher, so the teacher need not even be loaded. The KD term is the same as online, up
to the float noise of padding to another batch length.

What is stored, per row (float32, `read.OUTPUT_DTYPE`):
- sequence classification: all `num_labels` logits, `[num_labels]`;
- token classification and causal LM: the logits of every position of the row, `[length, classes]`
  (unpadded; `TeacherCacheCollator` pads them with the batch). A causal LM's vocabulary makes this
  large (the build logs its size first and refuses when it exceeds the free disk space), hence:
- with `top_k` (for LM vocabularies), per item the teacher's k most likely classes instead:
  `teacher_topk_logprobs` `[..., k+1]`, the log-probabilities log_softmax(z/T) of those k classes at
  the distillation temperature T followed by the log of the mass outside them (-inf when k =
  classes), and `teacher_topk_indices` `[..., k]`, int32, their class ids. The KD term then compares
  the student on those k+1 buckets (`hfkd.objective.losses.TOPK_KD_LOSSES`: kl and ce).
  Log-probabilities at T rather than raw logits plus a normaliser: the rest mass depends on T either
  way (so T is in the fingerprint either way), and storing it as a log computed over the whole
  vocabulary at build time keeps it exact where the top-k hold nearly all the mass (1 - sum would
  cancel to 0 in float32); the KD targets are then read, not recomputed.
Several teachers (a list) store their full logits side by side in teacher order, `[K * classes]` or
`[length, K * classes]`; the trainer splits and combines them every step (`hfkd.teacher.ensemble`).
A top-k cache holds one teacher.

The fingerprint (`fingerprint.py`) records what the outputs depend on: a sha256 of the teacher's
weights (in the dtype it runs in; a list of them, in order, for several teachers), a sha256 of the
rows themselves (`rows_sha256`: every column's values in order, so a run that tokenizes the same
rows with other unrelated settings finds the cache fresh), top-k and the temperature of a top-k cache, the hfkd version and any
`fingerprint_extra` (the recipes add the tokenizer's vocabulary hash, `max_seq_length` and
`block_size`). It is in the manifest `fingerprint.json` and in every shard (`shards.py`: the
layout, written so that a kill at any point leaves the previous cache or the new one, and a rerun
resumes). `load_teacher_cache` (`read.py`) refuses a cache whose fingerprint differs from the
expected one and a shard that differs from its manifest. Inputs that change every epoch (random MLM
masking, augmentation in the collator or in an on-the-fly transform) cannot be cached and are refused.

Modules: `fingerprint` (what a cache depends on), `build` (the teacher over the rows, shard by
shard, in one or several processes), `shards` (the files, the manifest, resuming), `read` (loading
memory-mapped, the collator).
"""

from hfkd.teacher.cache.build import SHARD_BYTES, SHARD_ROWS, build_teacher_cache
from hfkd.teacher.cache.fingerprint import state_dict_sha256, teacher_cache_fingerprint, tokenizer_sha256
from hfkd.teacher.cache.read import (
    CACHE_COLUMNS,
    OUTPUT_DTYPE,
    TEACHER_LOGITS,
    TEACHER_TOPK_INDICES,
    TEACHER_TOPK_LOGPROBS,
    TeacherCacheCollator,
    check_cache_fits,
    has_teacher_cache,
    load_teacher_cache,
)
from hfkd.teacher.cache.shards import (
    FINGERPRINT_NAME,
    REBUILD_HINT,
    TeacherCacheError,
    cache_exists,
    check_cache_dir,
)

__all__ = [
    "CACHE_COLUMNS", "FINGERPRINT_NAME", "OUTPUT_DTYPE", "REBUILD_HINT", "SHARD_BYTES", "SHARD_ROWS", "TEACHER_LOGITS",
    "TEACHER_TOPK_INDICES", "TEACHER_TOPK_LOGPROBS", "TeacherCacheCollator", "TeacherCacheError",
    "build_teacher_cache", "cache_exists", "check_cache_dir", "check_cache_fits", "has_teacher_cache",
    "load_teacher_cache", "state_dict_sha256", "teacher_cache_fingerprint", "tokenizer_sha256",
]

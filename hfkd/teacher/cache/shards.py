"""The teacher cache on disk: shards that are complete or absent, and a manifest written last.

    cache_dir/
      fingerprint.json                     the manifest: the fingerprint + "shards": [{"name", "rows"}]
      shards/<digest>-00003-of-00016/      `Dataset.save_to_disk` of rows [start, stop) with their outputs
             shard.json                    that shard's fingerprint and rows
      shards/.tmp-<name>-<pid>/            a shard being written

A shard is written into a temp folder and renamed into place, so a shard folder that exists is
complete. The manifest (`hfkd.io.atomic_write`) is written only once every shard of the build is:
a cache that looks complete is complete, and until then the previous manifest and its shards still
serve. Shard names start with a digest of the fingerprint, so a build for another teacher,
tokenizer, data or setting never reuses a shard. A killed build leaves its complete shards: the same
command resumes, writing only the missing ones (in any number of processes).
"""

from __future__ import annotations

import errno
import json
import logging
import os
import shutil
from collections.abc import Mapping, Sequence
from typing import Any

import datasets
import numpy as np
import torch

from hfkd.io import atomic_write
from hfkd.models import HfkdError
from hfkd.teacher.cache.fingerprint import SHARDS_KEY, fingerprint_digest

logger = logging.getLogger(__name__)

FINGERPRINT_NAME = "fingerprint.json"
SHARDS_DIR = "shards"
SHARD_META = "shard.json"
TMP_PREFIX = ".tmp-"
REBUILD_HINT = "rebuild it with `hfkd cache-teacher --config C.yaml` (or hfkd.teacher.cache.build_teacher_cache)"


class TeacherCacheError(HfkdError, ValueError):
    """A teacher cache that cannot be built or read as it stands (printed as one line by the CLI)."""


def plan_shards(row_bytes: np.ndarray, shard_rows: int, shard_bytes: int) -> list[tuple[int, int]]:
    """Contiguous row ranges of at most `shard_rows` rows and (past the first row) `shard_bytes` bytes.

    Bounded shards are what bound the build's memory: one shard's outputs are held at a time.
    """
    bounds, start, size = [], 0, 0
    for row, nbytes in enumerate(row_bytes.tolist()):
        if row > start and (row - start == shard_rows or size + nbytes > shard_bytes):
            bounds.append((start, row))
            start, size = row, 0
        size += nbytes
    bounds.append((start, len(row_bytes)))
    return bounds


class CacheLayout:
    """The shards of one build (a fingerprint and its row ranges) in `cache_dir`, and its manifest."""

    def __init__(self, cache_dir: str | os.PathLike, fingerprint: Mapping[str, Any],
                 bounds: Sequence[tuple[int, int]]) -> None:
        self.cache_dir = os.fspath(cache_dir)
        self.shards_dir = os.path.join(self.cache_dir, SHARDS_DIR)
        self.fingerprint = json.loads(json.dumps(dict(fingerprint)))  # as stored: tuples are lists
        self.bounds = [tuple(b) for b in bounds]
        digest = fingerprint_digest(self.fingerprint)
        self.names = [f"{digest}-{i:05d}-of-{len(bounds):05d}" for i in range(len(bounds))]

    def manifest(self) -> dict[str, Any]:
        return {**self.fingerprint, SHARDS_KEY: [{"name": n, "rows": list(b)} for n, b in zip(self.names, self.bounds)]}

    def complete(self) -> bool:
        """The manifest in place is this build's: nothing is left to do."""
        return read_manifest(self.cache_dir) == self.manifest()

    def prepare(self) -> None:
        """Drop what no cache can use (main process, before any shard is written): temp folders of killed
        writes, shards of other builds that the manifest in place does not serve, shards that disagree."""
        os.makedirs(self.shards_dir, exist_ok=True)
        serving = {s["name"] for s in (read_manifest(self.cache_dir) or {}).get(SHARDS_KEY, [])}
        ours = dict(zip(self.names, self.bounds))
        dropped = 0
        for name in os.listdir(self.shards_dir):
            path = os.path.join(self.shards_dir, name)
            if name.startswith(TMP_PREFIX) or (name not in serving and name not in ours):
                dropped += not name.startswith(TMP_PREFIX)
                shutil.rmtree(path, ignore_errors=True)
            elif name in ours and _shard_meta(path) != {"fingerprint": self.fingerprint, "rows": list(ours[name])}:
                logger.warning("Teacher cache: shard %s does not hold this build's rows and fingerprint "
                               "(another teacher, tokenizer, data or setting): rebuilding it.", name)
                shutil.rmtree(path)
        if dropped:
            logger.info("Teacher cache: removed %d partial shard(s) of an unfinished build for another "
                        "teacher, tokenizer, data or setting in %s.", dropped, self.cache_dir)

    def missing(self) -> list[int]:
        """Indices of the shards not written yet (each existing shard folder is complete)."""
        return [i for i, name in enumerate(self.names) if not os.path.isdir(os.path.join(self.shards_dir, name))]

    def write(self, index: int, shard: datasets.Dataset) -> None:
        """Save shard `index` into a temp folder, then rename it into place; out of disk is one line."""
        name = self.names[index]
        tmp = os.path.join(self.shards_dir, f"{TMP_PREFIX}{name}-{os.getpid()}")
        try:
            shard.save_to_disk(tmp)
            with open(os.path.join(tmp, SHARD_META), "w", encoding="utf-8") as handle:
                json.dump({"fingerprint": self.fingerprint, "rows": list(self.bounds[index])}, handle, sort_keys=True)
            os.replace(tmp, os.path.join(self.shards_dir, name))
        except OSError as error:
            if error.errno != errno.ENOSPC:
                raise
            done = len(self.names) - len(self.missing())
            raise TeacherCacheError(
                f"out of disk space writing teacher cache shard {index + 1} of {len(self.names)} in {self.cache_dir}: "
                f"free space and rerun the same command, which keeps the {done} complete shard(s) and resumes."
            ) from None
        finally:
            shutil.rmtree(tmp, ignore_errors=True)

    def commit(self) -> None:
        """Write the manifest once every shard is complete, then drop the shards it no longer serves."""
        if self.missing():
            raise TeacherCacheError(f"teacher cache in {self.cache_dir}: shards {self.missing()} are missing after "
                                    "the build (another process removed them?): rerun the same command.")
        previous = read_manifest(self.cache_dir)
        manifest = json.dumps(self.manifest(), indent=2, sort_keys=True)
        atomic_write(os.path.join(self.cache_dir, FINGERPRINT_NAME), manifest)
        if previous is not None and SHARDS_KEY not in previous:  # a one-table cache of an earlier hfkd
            for name in set(os.listdir(self.cache_dir)) - {FINGERPRINT_NAME, SHARDS_DIR}:
                path = os.path.join(self.cache_dir, name)
                shutil.rmtree(path) if os.path.isdir(path) else os.remove(path)
        self.drop_unused()

    def drop_unused(self) -> None:
        """Remove the shards this build's manifest does not list (the previous cache's, once replaced)."""
        for name in set(os.listdir(self.shards_dir)) - set(self.names):
            shutil.rmtree(os.path.join(self.shards_dir, name), ignore_errors=True)


def shard_paths(cache_dir: str | os.PathLike, manifest: Mapping[str, Any]) -> list[str]:
    """The manifest's shard folders, each checked against it (a mismatch is one line, never used)."""
    cache_dir = os.fspath(cache_dir)
    if SHARDS_KEY not in manifest:
        raise TeacherCacheError(f"the teacher cache in {cache_dir} was written by an earlier hfkd (one table, no "
                                f"shards): {REBUILD_HINT}.")
    fingerprint = {k: v for k, v in manifest.items() if k != SHARDS_KEY}
    paths = []
    for entry in manifest[SHARDS_KEY]:
        path = os.path.join(cache_dir, SHARDS_DIR, entry["name"])
        meta = _shard_meta(path)
        if meta is None:
            raise TeacherCacheError(f"teacher cache in {cache_dir}: its manifest lists shard {entry['name']}, which is "
                                    f"missing or incomplete: {REBUILD_HINT}.")
        if meta != {"fingerprint": fingerprint, "rows": entry["rows"]}:
            differing = sorted(k for k in set(fingerprint) | set(meta.get("fingerprint", {}))
                               if fingerprint.get(k) != meta.get("fingerprint", {}).get(k)) or ["rows"]
            raise TeacherCacheError(
                f"teacher cache in {cache_dir}: shard {entry['name']} does not match the manifest "
                f"({', '.join(differing)} differ: another teacher, tokenizer or data): {REBUILD_HINT}.")
        paths.append(path)
    return paths


def read_manifest(cache_dir: str | os.PathLike) -> dict[str, Any] | None:
    """The manifest hfkd wrote in `cache_dir`, or None when there is none (or it is not hfkd's)."""
    try:
        with open(os.path.join(os.fspath(cache_dir), FINGERPRINT_NAME), encoding="utf-8") as handle:
            stored = json.load(handle)
    except (OSError, ValueError):
        return None
    return stored if isinstance(stored, dict) and {"teacher_sha256", "hfkd_version"} <= set(stored) else None


def stored_fingerprint(dataset: datasets.Dataset) -> dict[str, Any] | None:
    """The fingerprint in the `shard.json` beside a cached dataset's Arrow files, while it is there."""
    for cache_file in dataset.cache_files:
        meta = _shard_meta(os.path.dirname(cache_file["filename"]))
        if meta is not None:
            return meta["fingerprint"]
    return None


def check_cache_dir(cache_dir: str | os.PathLike) -> None:
    """Refuse to build in a folder that is not an hfkd cache: a build removes what no cache there uses."""
    cache_dir = os.fspath(cache_dir)
    if not os.path.isdir(cache_dir) or read_manifest(cache_dir) is not None:
        return
    foreign = [n for n in os.listdir(cache_dir) if n != SHARDS_DIR and not n.startswith(f".{FINGERPRINT_NAME}.")]
    if foreign:
        raise TeacherCacheError(
            f"teacher_cache_dir {cache_dir} holds files but no hfkd teacher cache ({FINGERPRINT_NAME} written by "
            "hfkd), and building replaces the whole folder: choose a new or empty folder.")


def cache_exists(cache_dir: str | os.PathLike) -> bool:
    """Whether `cache_dir` holds a complete cache (a manifest: it is written last)."""
    return os.path.isfile(os.path.join(os.fspath(cache_dir), FINGERPRINT_NAME))


def check_disk_space(cache_dir: str | os.PathLike, needed: int) -> None:
    free = shutil.disk_usage(os.fspath(cache_dir)).free
    if needed > free:
        raise TeacherCacheError(
            f"a teacher cache in {cache_dir} needs about {needed / 2**30:.2f} GiB more but only "
            f"{free / 2**30:.2f} GiB are free: free space, cache fewer rows (max_train_samples), use a smaller "
            "teacher_cache_top_k, or train online.")


def processes() -> tuple[int, int]:
    """(this process's rank, number of processes) of the process group `accelerate launch` started, if any."""
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return torch.distributed.get_rank(), torch.distributed.get_world_size()
    return 0, 1


def check_same_build(layout: CacheLayout) -> None:
    """Every process must plan the same shards: else they would write different caches into one folder."""
    world = processes()[1]
    if world == 1:
        return
    plans: list[Any] = [None] * world
    torch.distributed.all_gather_object(plans, layout.names)
    if any(plan != plans[0] for plan in plans):
        raise TeacherCacheError(
            "the processes of this teacher cache build disagree on its fingerprint or shards (other data, "
            "teacher or settings in some process): give every process the same config and data.")


def barrier() -> None:
    if processes()[1] > 1:
        torch.distributed.barrier()


def _shard_meta(path: str) -> dict[str, Any] | None:
    try:
        with open(os.path.join(path, SHARD_META), encoding="utf-8") as handle:
            meta = json.load(handle)
    except (OSError, ValueError):
        return None
    return meta if isinstance(meta, dict) and {"fingerprint", "rows"} <= set(meta) else None

"""Writes a kill cannot half-do: one file (`atomic_write`), or a set of entries of a folder (`staged`).

`staged(folder)` yields a staging folder; what is written there replaces the same-named entries
(files or subfolders) of `folder` when the block ends. Steps, each an `os.replace` on one filesystem:

1. everything is written into `folder/.hfkd-staging-<pid>-<tag>/<name of folder>/` (named like the
   target, so a model card deriving its model name from the folder sees the same name);
2. the staging folder is renamed to `.hfkd-commit-<pid>-<tag>`: from here the new set is complete;
3. each entry moves into `folder`; an existing subfolder is first moved aside into the commit
   folder's `.replaced/`, a file is replaced in one step;
4. the commit folder (with the replaced entries) is removed.

A kill before step 2 leaves the previous entries untouched and a staging folder; a kill after it
leaves a commit folder. `recover(folder)`, run first by every `staged` write and by hfkd's readers
(resume, cache load), removes the staging folder and finishes a commit (rolls forward: the new set
was complete), so the folder then holds the previous complete set or the new complete one. Only
leftovers of processes that are no longer running are touched.
"""

from __future__ import annotations

import os
import shutil
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

STAGING_PREFIX = ".hfkd-staging-"
COMMIT_PREFIX = ".hfkd-commit-"
_REPLACED = ".replaced"


def atomic_write(path: str | os.PathLike, data: str | bytes) -> Path:
    """Write a temp file in the same folder, then os.replace: readers see old or new, never half."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{uuid.uuid4().hex}.tmp")
    payload = data.encode("utf-8") if isinstance(data, str) else data
    try:
        with open(tmp, "xb") as f:
            f.write(payload)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return path


@contextmanager
def staged(folder: str | os.PathLike, enabled: bool = True) -> Iterator[str]:
    """Yield a staging folder whose entries replace `folder`'s on success (see the module docstring).

    With `enabled=False` (a process that does not save) it yields `folder` itself and does nothing.
    """
    folder = os.path.abspath(os.fspath(folder))
    if not enabled:
        yield folder
        return
    os.makedirs(folder, exist_ok=True)
    recover(folder)
    tag = f"{os.getpid()}-{uuid.uuid4().hex[:8]}"
    staging = os.path.join(folder, STAGING_PREFIX + tag)
    content = os.path.join(staging, os.path.basename(folder))
    os.makedirs(content)
    commit = os.path.join(folder, COMMIT_PREFIX + tag)
    try:
        yield content
        os.replace(staging, commit)
    except BaseException:  # nothing was committed: the folder keeps its entries
        shutil.rmtree(staging, ignore_errors=True)
        raise
    _finish_commit(commit, folder)


def recover(folder: str | os.PathLike) -> None:
    """Clean up after a write into `folder` that a kill interrupted: drop unfinished staging folders,
    finish committed ones. Leftovers of running processes are left alone."""
    folder = os.fspath(folder)
    if not os.path.isdir(folder):
        return
    for name in sorted(os.listdir(folder)):
        path = os.path.join(folder, name)
        if name.startswith(STAGING_PREFIX) and not _owner_running(name):
            shutil.rmtree(path, ignore_errors=True)
        elif name.startswith(COMMIT_PREFIX) and not _owner_running(name):
            _finish_commit(path, folder)


def _finish_commit(commit: str, folder: str) -> None:
    """Move the committed entries into `folder` (idempotent: a rerun continues where a kill stopped)."""
    content = os.path.join(commit, os.path.basename(os.path.abspath(folder)))
    replaced = os.path.join(commit, _REPLACED)
    os.makedirs(replaced, exist_ok=True)
    for name in sorted(os.listdir(content)) if os.path.isdir(content) else ():
        new, target = os.path.join(content, name), os.path.join(folder, name)
        if os.path.isdir(new) and os.path.lexists(target):
            os.replace(target, os.path.join(replaced, name))  # a folder cannot be replaced in one step
        os.replace(new, target)
    shutil.rmtree(commit)


def _owner_running(name: str) -> bool:
    """Whether the process that made this leftover (its pid is in the name) still runs."""
    try:
        pid = int(name.split("-")[2])
    except (IndexError, ValueError):
        return False
    if pid == os.getpid():
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True

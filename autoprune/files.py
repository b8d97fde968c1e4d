"""Atomic file writes: a temp file in the target folder, then ``os.replace`` (no half-written output ever)."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

__all__ = ["check_runs_folder", "check_writable", "write_atomic"]


def write_atomic(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` through a temp file + rename; on any error the temp file is removed."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes 0600; outputs get the user's usual mode (0644)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _umask() -> int:
    """The process's umask (read by setting and restoring it: there is no getter)."""
    mask = os.umask(0)
    os.umask(mask)
    return mask


def check_writable(path: Path, what: str) -> None:
    """Raise a one-line error now, before any long work, when ``path`` could not be written."""
    from autoprune.errors import AutopruneError

    folder = path.parent
    while not folder.exists() and folder != folder.parent:
        folder = folder.parent  # the first existing ancestor is where the folders would be created
    if not folder.is_dir():
        raise AutopruneError(f"{what} {path}: {folder} is a file, not a folder")
    if not os.access(folder, os.W_OK | os.X_OK) or not _can_create_in(folder):
        raise AutopruneError(f"{what} {path}: folder {folder} is not writable")
    if path.exists() and not os.access(path, os.W_OK):
        raise AutopruneError(f"{what} {path}: the file exists and is not writable")


def _can_create_in(folder: Path) -> bool:
    """Whether a file can really be created in ``folder`` (root passes ``os.access`` on read-only mounts)."""
    try:
        fd, probe = tempfile.mkstemp(dir=folder, prefix=".write-probe.")
    except OSError:
        return False
    os.close(fd)
    os.unlink(probe)
    return True


def check_runs_folder(runs_dir: Path) -> None:
    """Create ``runs_dir`` if needed and prove it writable with a real probe file (``os.access`` says yes to root
    even on a read-only mount): a one-line error now, before a dense model trains, instead of a traceback later."""
    from autoprune.errors import AutopruneError

    try:
        runs_dir.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise AutopruneError(f"--runs {runs_dir}: cannot write there ({err.strerror or err}); "
                             "pass --runs FOLDER with a writable folder") from None
    if not _can_create_in(runs_dir):
        raise AutopruneError(f"--runs {runs_dir}: cannot write there (read-only); pass --runs FOLDER with a "
                             "writable folder")

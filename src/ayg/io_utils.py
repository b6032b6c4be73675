"""Atomic file writes: every output of ayg (assets, checkpoints, configs, PLYs, videos, tracks)
is written to a temporary file in the destination directory and then renamed over the target
with ``os.replace``. A reader never sees a half-written file, and a write interrupted by an
exception, Ctrl-C or a crash leaves the previous file (if any) untouched.

Three forms, for three kinds of writers:

* ``atomic_write(path, "wb")`` — a context manager yielding an open file object;
* ``atomic_path(path)`` — a context manager yielding a temporary *path* for libraries that
  insist on opening the file themselves (safetensors ``save_file``, imageio, ...). The
  temporary name keeps the target's suffix, so format detection by extension still works;
* ``write_bytes`` / ``write_text`` / ``write_json`` / ``write_numpy_npz`` /
  ``atomic_torch_save`` — one-shot helpers (``atomic_write_text`` etc. are aliases).

Temporary files are named ``.<name>.tmp-<random><suffix>`` so that they are hidden and easy to
recognise; they are removed on failure. A process killed outright (SIGKILL, power loss) cannot
remove its own: ``remove_temp_files`` clears them from a run directory on its next start.

A write that fails because of the file system (read-only, full, a path under a regular file,
a directory in the way) raises ``WriteError``: an ``OSError`` whose message names the target
the caller asked for, never the temporary file.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import tempfile
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import IO, Any

TMP_MARKER = ".tmp-"


class WriteError(OSError):
    """An output could not be written; ``str()`` is one line naming the target path."""

    def __str__(self) -> str:
        return self.strerror or super().__str__()


def write_error(path: Path, error: OSError) -> WriteError:
    """A ``WriteError`` for ``path`` that says what stood in the way of ``error``."""
    path = Path(path)
    blocker = next((p for p in path.parents if p.exists() and not p.is_dir()), None)
    if blocker is not None:
        code, reason = errno.ENOTDIR, f"'{blocker}' is a file, not a directory"
    elif path.is_dir():
        code, reason = errno.EISDIR, "it is a directory; give a file name"
    else:
        code, reason = error.errno, error.strerror or str(error)
    return WriteError(code, f"cannot write '{path}': {reason}")


def _mentions(error: OSError, tmp: Path) -> bool:
    return any(str(f) == str(tmp) for f in (error.filename, error.filename2)) or (
        tmp.name in str(error)
    )


def remove_temp_files(directory: str | os.PathLike, names: Iterable[str]) -> list[Path]:
    """Delete the temporary files that interrupted atomic writes of ``directory/NAME`` (for
    each of ``names``) left behind; returns what was removed. Only for a directory that one
    process writes at a time (a run directory): another writer's temporary file would go too."""
    directory = Path(directory)
    prefixes = tuple(f".{name}{TMP_MARKER}" for name in names)
    removed: list[Path] = []
    if not directory.is_dir() or not prefixes:
        return removed
    for p in directory.iterdir():
        if p.name.startswith(prefixes) and p.is_file():
            with contextlib.suppress(FileNotFoundError):
                p.unlink()
                removed.append(p)
    return removed


def _fsync_dir(directory: Path) -> None:
    # Make the rename itself durable; not every platform lets us open a directory.
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _make_temp(path: Path) -> Path:
    directory = path.parent
    directory.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(
        prefix=f".{path.name}{TMP_MARKER}", suffix="".join(path.suffixes[-1:]), dir=directory
    )
    os.close(fd)
    return Path(tmp)


def _discard(tmp: Path) -> None:
    with contextlib.suppress(FileNotFoundError):
        tmp.unlink()


def _commit(tmp: Path, path: Path) -> None:
    # Flush the data to disk before the rename, so a crash cannot leave an empty target.
    with contextlib.suppress(OSError), open(tmp, "rb+") as f:
        os.fsync(f.fileno())
    # mkstemp creates files with mode 0600; give the result the usual umask-based mode.
    umask = os.umask(0)
    os.umask(umask)
    with contextlib.suppress(OSError):
        os.chmod(tmp, 0o666 & ~umask)
    os.replace(tmp, path)
    _fsync_dir(path.parent)


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yields a temporary path next to ``path``; on normal exit it is renamed to ``path``.

    The caller (or the library it calls) must create the file at the yielded path. If the block
    raises, the temporary file is deleted and ``path`` is left as it was.
    """
    path = Path(path)
    try:
        tmp = _make_temp(path)
    except OSError as e:
        raise write_error(path, e) from e
    try:
        yield tmp
        if not tmp.exists():
            raise FileNotFoundError(f"atomic write of {path}: nothing was written to {tmp}")
        try:
            _commit(tmp, path)
        except OSError as e:
            raise write_error(path, e) from e
    except WriteError:
        _discard(tmp)
        raise
    except OSError as e:
        _discard(tmp)
        if _mentions(e, tmp):  # the writer failed on the temporary file: name the target
            raise write_error(path, e) from e
        raise
    except BaseException:
        _discard(tmp)
        raise


@contextlib.contextmanager
def atomic_write(
    path: str | os.PathLike, mode: str = "wb", encoding: str | None = None
) -> Iterator[IO[Any]]:
    """Yields a file object opened on a temporary file; committed to ``path`` on normal exit.

    ``mode`` is "w" / "wb" (text or binary); ``encoding`` defaults to utf-8 for text.
    """
    if mode not in ("w", "wb", "wt"):
        raise ValueError(f"atomic_write supports modes 'w', 'wt' and 'wb', got {mode!r}")
    if "b" not in mode and encoding is None:
        encoding = "utf-8"
    with atomic_path(path) as tmp:
        with open(tmp, mode, encoding=encoding) as f:
            yield f
            f.flush()
            os.fsync(f.fileno())


def write_bytes(path: str | os.PathLike, data: bytes) -> None:
    """Atomically replace ``path`` with ``data``."""
    with atomic_write(path, "wb") as f:
        f.write(data)


def write_text(path: str | os.PathLike, text: str) -> None:
    """Atomically replace ``path`` with ``text`` (utf-8)."""
    with atomic_write(path, "w") as f:
        f.write(text)


def write_json(path: str | os.PathLike, obj: Any, indent: int | None = 2) -> None:
    """Atomically write ``obj`` as JSON (sorted keys are *not* forced: dict order is kept)."""
    write_text(path, json.dumps(obj, indent=indent, ensure_ascii=False) + "\n")


def write_numpy_npz(path: str | os.PathLike, compressed: bool = True, **arrays: Any) -> None:
    """Atomically write a ``.npz`` archive (no ``.npz`` suffix is appended to ``path``)."""
    import numpy as np

    with atomic_write(path, "wb") as f:
        (np.savez_compressed if compressed else np.savez)(f, **arrays)


def atomic_torch_save(obj: Any, path: str | os.PathLike) -> None:
    """Atomically ``torch.save(obj, path)`` (checkpoints survive an interrupted save)."""
    import torch

    with atomic_write(path, "wb") as f:
        torch.save(obj, f)


# Names used across the package.
atomic_write_text = write_text
atomic_write_bytes = write_bytes
atomic_write_json = write_json

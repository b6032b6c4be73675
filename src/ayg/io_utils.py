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
recognise; they are removed on failure.
"""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any

TMP_MARKER = ".tmp-"


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
    tmp = _make_temp(path)
    try:
        yield tmp
        if not tmp.exists():
            raise FileNotFoundError(f"atomic write of {path}: nothing was written to {tmp}")
        _commit(tmp, path)
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

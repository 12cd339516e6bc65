"""Atomic file writing: a temp file in the target's directory, then ``os.replace``, so readers never see a
half-written file and a failed write leaves nothing behind."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any

import cv2
import numpy as np

__all__ = [
    "check_output_path",
    "atomic_open",
    "atomic_write_bytes",
    "atomic_write_text",
    "atomic_write_json",
    "atomic_write_png",
    "encode_png",
]


def check_output_path(path: str | os.PathLike, kind: str = "file", what: str = "--out") -> Path:
    """Check, before any work, that ``path`` can be written as a file or used as an output folder.

    The one check of every command-line output (``--out``, ``--report``, ``--work-dir``): a file output must not
    be an existing folder, a folder output must not be an existing file, and the nearest existing ancestor must be
    a folder this process may write into (so the missing folders can be created). Nothing is created.

    Args:
        path: The output path.
        kind: ``"file"`` (a file written there) or ``"dir"`` (a folder created or filled there).
        what: How the message names the path (the option, e.g. ``"--report"``).

    Returns:
        ``path`` as a :class:`~pathlib.Path`.

    Raises:
        ValueError: One line naming ``what`` and the path and saying what is wrong.
    """
    if kind not in ("file", "dir"):
        raise ValueError(f"check_output_path: kind must be 'file' or 'dir', got {kind!r}")
    path = Path(path)
    if str(path) == "":
        raise ValueError(f"{what}: empty path")
    if path.exists():
        if kind == "file" and path.is_dir():
            raise ValueError(f"{what} {path}: is a folder, expected a file name")
        if kind == "dir" and not path.is_dir():
            raise ValueError(f"{what} {path}: is a file, expected a folder")
        target = path if kind == "dir" else path.parent
        if not os.access(target if str(target) else ".", os.W_OK):
            raise ValueError(f"{what} {path}: {'folder' if kind == 'dir' else 'file'} is not writable")
        if kind == "file" and not os.access(path, os.W_OK):
            raise ValueError(f"{what} {path}: file is not writable")
        return path
    parent = path.parent
    while not parent.exists() and parent != parent.parent:
        parent = parent.parent
    anchor = parent if str(parent) else Path(".")
    if not anchor.is_dir():
        raise ValueError(f"{what} {path}: {anchor} is a file, so no folder can be created under it")
    if not os.access(anchor, os.W_OK | os.X_OK):
        raise ValueError(f"{what} {path}: folder {anchor} is not writable")
    return path


def _umask() -> int:
    """The process umask (read by setting and restoring it)."""
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


@contextlib.contextmanager
def atomic_open(path: str | os.PathLike, mode: str = "wb") -> Iterator[IO]:
    """Open a temporary file beside ``path`` for writing; it replaces ``path`` only when the block succeeds.

    The one atomic-write primitive of the stack (the ``atomic_write_*`` helpers use it): a writer that streams
    into a file object (``np.savez_compressed``, ``json.dump``, ...) gets the same guarantee. Parent directories
    are created. On an exception the temporary file is removed and ``path`` is left as it was.

    Args:
        path: Destination file.
        mode: ``"wb"`` or ``"w"`` (text, UTF-8).

    Yields:
        The open temporary file.
    """
    if mode not in ("wb", "w"):
        raise ValueError(f"atomic_open: mode must be 'wb' or 'w', got {mode!r}")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, mode, **({"encoding": "utf-8"} if mode == "w" else {})) as f:
            yield f
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp creates 0600; give what open() would have given
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    """Write ``data`` to ``path`` atomically (parent directories are created).

    Args:
        path: Destination file.
        data: File content.
    """
    with atomic_open(path, "wb") as f:
        f.write(data)


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    """Write UTF-8 ``text`` to ``path`` atomically."""
    atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_json(path: str | os.PathLike, obj: Any, indent: int | None = None) -> None:
    """Write ``obj`` as JSON to ``path`` atomically (compact unless ``indent`` is given)."""
    separators = (",", ":") if indent is None else None
    atomic_write_text(path, json.dumps(obj, indent=indent, separators=separators))


def encode_png(image: np.ndarray) -> bytes:
    """Encode a uint8 (H, W) or (H, W, 3) BGR image as PNG bytes (lossless, deterministic)."""
    ok, buf = cv2.imencode(".png", np.ascontiguousarray(image))
    if not ok:
        raise ValueError(f"could not encode an image of shape {image.shape} and dtype {image.dtype} as PNG")
    return buf.tobytes()


def atomic_write_png(path: str | os.PathLike, image: np.ndarray) -> None:
    """Write a uint8 image as PNG to ``path`` atomically."""
    atomic_write_bytes(path, encode_png(image))


def replace_dir(src: str | os.PathLike, dst: str | os.PathLike) -> None:
    """Put directory ``src`` at ``dst``, replacing a directory already there (the old one is moved aside first, then
    deleted), so ``dst`` never holds a mix of old and new files."""
    src, dst = Path(src), Path(dst)
    dst.parent.mkdir(parents=True, exist_ok=True)
    trash = None
    if dst.exists():
        trash = Path(tempfile.mkdtemp(prefix=f".{dst.name}.old.", dir=dst.parent))
        os.replace(dst, trash / dst.name)
    os.replace(src, dst)
    if trash is not None:
        shutil.rmtree(trash, ignore_errors=True)


def move_staged_files(staging: str | os.PathLike, out_dir: str | os.PathLike) -> list[str]:
    """Move every file under ``staging`` to the same relative path under ``out_dir`` (``os.replace`` each).

    Returns:
        The moved files' relative paths (posix), sorted.
    """
    staging, out_dir = Path(staging), Path(out_dir)
    moved = []
    for src in sorted(p for p in staging.rglob("*") if p.is_file()):
        rel = src.relative_to(staging)
        (out_dir / rel).parent.mkdir(parents=True, exist_ok=True)
        os.replace(src, out_dir / rel)
        moved.append(rel.as_posix())
    return moved

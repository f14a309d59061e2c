"""Atomic file writes: a reader (or a run that crashed mid-write) sees the old file or the whole new one."""

from __future__ import annotations

import contextlib
import os
import re
import secrets
import stat
from pathlib import Path


TEMPORARY_TOKEN_BYTES = 6  # the random part of a temporary's name: .NAME.HEX.tmp


def temporary_target(name: str) -> str | None:
    """The file a temporary of ``write_atomically`` was to become (``.NAME.HEX.tmp`` -> ``NAME``), else None."""
    match = re.fullmatch(rf"\.(.+)\.[0-9a-f]{{{2 * TEMPORARY_TOKEN_BYTES}}}\.tmp", name)
    return match.group(1) if match else None


def describe_os_error(error: OSError) -> str:
    """``No space left on device (path)``: what failed, and on which file when the error names one."""
    return f"{error.strerror or error}{f' ({error.filename})' if error.filename else ''}"


def write_atomically(path: Path | str, write, durable: bool = False) -> None:
    """Call ``write(temp_path)``, then rename the temporary file onto ``path``.

    The temporary file sits beside ``path`` (a rename within one file system is atomic) and is
    created with mode 0666 less the umask, as ``open()`` would create ``path``, and keeps that mode
    even when ``write`` replaces the file (safetensors creates its own, with mode 0600). ``durable``
    syncs the bytes to disk before the rename, so that a power cut cannot leave an empty file behind it.
    """
    path = Path(path)
    temp = path.with_name(f".{path.name}.{secrets.token_hex(TEMPORARY_TOKEN_BYTES)}.tmp")
    with _naming(path):
        path.parent.mkdir(parents=True, exist_ok=True)
        os.close(os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666))
    try:
        with _naming(path):
            mode = stat.S_IMODE(temp.stat().st_mode)
            write(str(temp))
            os.chmod(temp, mode)
            if durable:
                with open(temp, "rb") as written:
                    os.fsync(written.fileno())
            os.replace(temp, path)
    finally:
        if temp.exists():
            temp.unlink()


@contextlib.contextmanager
def _naming(path: Path):
    """An OSError (a full disk, say) names the file the caller asked for, not the temporary."""
    try:
        yield
    except OSError as error:
        error.filename, error.filename2 = str(path), None
        raise


def write_bytes_atomically(path: Path | str, data: bytes | memoryview, durable: bool = False) -> None:
    """``Path.write_bytes``, atomically. Serialising to memory first and writing here turns a full
    disk into an OSError naming the file; torch.save and safetensors writing to a path report it as
    their own errors, with no errno."""
    write_atomically(path, lambda temp: Path(temp).write_bytes(data), durable=durable)


def write_text_atomically(path: Path | str, text: str) -> None:
    """``Path.write_text``, atomically."""
    write_atomically(path, lambda temp: Path(temp).write_text(text))

"""Atomic file writes: a reader (or a run that crashed mid-write) sees the old file or the whole new one."""

from __future__ import annotations

import os
import secrets
from pathlib import Path


def write_atomically(path: Path | str, write, durable: bool = False) -> None:
    """Call ``write(temp_path)``, then rename the temporary file onto ``path``.

    The temporary file sits beside ``path`` (a rename within one file system is atomic) and is
    created with mode 0666 less the umask, as ``open()`` would create ``path``. ``durable`` syncs
    the bytes to disk before the rename, so that a power cut cannot leave an empty file behind it.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    temp = path.with_name(f".{path.name}.{secrets.token_hex(6)}.tmp")
    os.close(os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666))
    try:
        write(str(temp))
        if durable:
            with open(temp, "rb") as written:
                os.fsync(written.fileno())
        os.replace(temp, path)
    finally:
        if temp.exists():
            temp.unlink()

"""Writing files safely: atomic replace, no silent overwrite, sanitized names."""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import BinaryIO

from .errors import ConceptKitError, InputError


def atomic_write(path: Path, write: Callable[[BinaryIO], None], overwrite: bool = False) -> Path:
    """Write through a temporary file in the same folder and rename it into place, so a crash or a
    full disk never leaves a half-written file under the real name."""
    path = Path(path)
    if path.exists() and not overwrite:
        raise InputError(f"{path} already exists; choose another name or allow overwriting.")
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except OSError as e:
        Path(tmp).unlink(missing_ok=True)
        raise ConceptKitError(f"could not write {path} ({e.strerror or e}); check free disk space and permissions.") \
            from None
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path

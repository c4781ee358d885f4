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


SAFE_NAME_CHARS = set("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-_. ")


def safe_file_name(name: str, what: str = "name") -> str:
    """`name` as a plain file name: no folders, no hidden or reserved names, nothing a shell or another OS
    would trip on. Refused (not silently changed) so that users find their file under the name they gave."""
    stripped = name.strip()
    if not stripped or stripped in (".", ".."):
        raise InputError(f"the {what} is empty; give a plain file name such as 'my_dog'.")
    if "/" in stripped or "\\" in stripped or ":" in stripped:
        raise InputError(f"the {what} '{name}' contains a folder separator; give a plain file name such as "
                         f"'{stripped.replace('/', '_').replace(chr(92), '_').replace(':', '_')}'.")
    bad = sorted(set(stripped) - SAFE_NAME_CHARS)
    if bad or stripped.startswith("."):
        raise InputError(f"the {what} '{name}' has characters that are not safe in file names "
                         f"({' '.join(repr(c) for c in bad) or 'a leading dot'}); use letters, digits, '-', '_' "
                         "and '.'.")
    return stripped


def write_safetensors(path: Path, tensors: dict, metadata: dict[str, str], overwrite: bool = False) -> Path:
    """A safetensors file written atomically (never half-written, never silently replacing a file)."""
    from safetensors.torch import save

    plain, storages = {}, set()
    for key, value in tensors.items():
        value = value.detach().cpu().contiguous()
        if value.untyped_storage().data_ptr() in storages:  # safetensors refuses tensors that share memory
            value = value.clone()
        storages.add(value.untyped_storage().data_ptr())
        plain[key] = value
    data = save(plain, metadata=metadata)
    return atomic_write(Path(path), lambda f: f.write(data), overwrite=overwrite)

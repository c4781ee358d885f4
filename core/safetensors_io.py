"""Loading weight files safely: safetensors only, with errors that name the file."""

from __future__ import annotations

import json
import struct
from pathlib import Path

import torch
from safetensors.torch import load_file

from .errors import ModelLoadError, UnsafeFileError

PICKLE_SUFFIXES = {".ckpt", ".pt", ".pth", ".bin", ".pkl", ".pickle"}


def refuse_pickle(path: Path) -> None:
    """Raise UnsafeFileError for pickle-based weight files, which can run arbitrary code when opened."""
    if path.suffix.lower() in PICKLE_SUFFIXES:
        raise UnsafeFileError(
            f"{path.name}: '{path.suffix}' files are Python pickles, which can run arbitrary code when loaded, "
            "so ConceptKit does not open them. Convert it once to .safetensors in a trusted environment "
            "(for example with the 'safetensors' converter or kohya's convert scripts) and load that file."
        )


def read_safetensors_metadata(path: Path) -> dict[str, str]:
    """The `__metadata__` header of a safetensors file, after checking the header is whole."""
    path = Path(path)
    refuse_pickle(path)
    try:
        with open(path, "rb") as f:
            raw_len = f.read(8)
            if len(raw_len) != 8:
                raise ValueError("the file is shorter than a safetensors header")
            (header_len,) = struct.unpack("<Q", raw_len)
            size = path.stat().st_size
            if header_len > size - 8:
                raise ValueError("the header says it is longer than the file")
            header = json.loads(f.read(header_len))
            data_end = max((v["data_offsets"][1] for k, v in header.items() if k != "__metadata__"), default=0)
            if 8 + header_len + data_end > size:
                raise ValueError(f"the file is truncated ({size} bytes, {8 + header_len + data_end} expected)")
    except FileNotFoundError:
        raise ModelLoadError(f"{path}: no such file.") from None
    except IsADirectoryError:
        raise ModelLoadError(f"{path} is a folder, not a .safetensors file.") from None
    except OSError as e:
        raise ModelLoadError(f"{path}: could not be read ({e.strerror or e}); check that you may read it.") from None
    except (ValueError, KeyError, TypeError, UnicodeDecodeError) as e:
        raise ModelLoadError(
            f"{path.name}: not a readable .safetensors file ({e}). Download or export it again."
        ) from None
    return dict(header.get("__metadata__") or {})


def load_safetensors(path: Path, device: str = "cpu") -> dict[str, torch.Tensor]:
    """All tensors of a safetensors file; a damaged or pickle file gives a one-line ModelLoadError."""
    path = Path(path)
    read_safetensors_metadata(path)  # validates the header and the length before torch sees it
    try:
        return load_file(str(path), device=device)
    except Exception as e:  # safetensors raises its own SafetensorError / OSError types
        raise ModelLoadError(f"{path.name}: could not be read as .safetensors ({e}).") from None


def check_finite(tensors: dict[str, torch.Tensor], path: Path, fix: str) -> dict[str, torch.Tensor]:
    """`tensors`, after checking every floating one holds numbers: a file with NaN or infinity is damaged (found
    when it is loaded, not as a black image or a 'diverged' training later)."""
    broken = sorted(k for k, v in tensors.items() if v.is_floating_point() and not torch.isfinite(v).all())
    if broken:
        more = f" and {len(broken) - 1} more" if len(broken) > 1 else ""
        raise ModelLoadError(f"{Path(path).name} holds values that are not numbers (NaN or infinity) in {broken[0]}"
                             f"{more}; the file is damaged: {fix}.")
    return tensors

"""Tables, JSON and markdown reports of bench rows."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
from PIL import Image

from ..core.files import atomic_write


def format_table(rows: list[dict]) -> str:
    if not rows:
        return "(no rows)"
    columns = list(rows[0])
    cells = [[_cell(row.get(c)) for c in columns] for row in rows]
    widths = [max(len(c), *(len(r[i]) for r in cells)) for i, c in enumerate(columns)]
    line = lambda values: "| " + " | ".join(v.ljust(w) for v, w in zip(values, widths, strict=True)) + " |"  # noqa: E731
    return "\n".join([line(columns), "|" + "|".join("-" * (w + 2) for w in widths) + "|"] + [line(r) for r in cells])


def _cell(value) -> str:
    if not isinstance(value, float):
        return str(value)
    return f"{value:.4f}" if value == 0 or abs(value) >= 1e-3 else f"{value:.1e}"


def image_grid(images: np.ndarray, columns: int = 8) -> Image.Image:
    """uint8 [N, H, W, 3] -> one grid image."""
    n, h, w, _ = images.shape
    rows = -(-n // columns)
    grid = np.full((rows * h, columns * w, 3), 255, np.uint8)
    for i, image in enumerate(images):
        r, c = divmod(i, columns)
        grid[r * h:(r + 1) * h, c * w:(c + 1) * w] = image
    return Image.fromarray(grid)


def write_json(path: Path, suite: str, rows: list[dict]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    data = json.dumps({"suite": suite, "rows": rows}, indent=2).encode() + b"\n"
    atomic_write(path, lambda f: f.write(data), if_exists="overwrite")


def write_report(folder: Path, suite: str, rows: list[dict], grids: dict[str, tuple[np.ndarray, list[str]]],
                 notes: str = "", figures: dict[str, Image.Image] | None = None) -> Path:
    """report.md with the table, one grid PNG per entry of `grids` (name -> (images, captions); the file is the
    name with every run of other characters than letters and digits as one '_') and the named figures (file name
    -> image) the notes link to."""
    folder.mkdir(parents=True, exist_ok=True)
    for name, figure in (figures or {}).items():
        figure.save(folder / name)
    lines = [f"# ConceptKit bench: {suite}", "", notes, "", format_table(rows), ""]
    for name, (images, captions) in grids.items():
        stem = re.sub(r"[^A-Za-z0-9]+", "_", name).strip("_")
        image_grid(images).resize((8 * 128, -(-len(images) // 8) * 128), Image.NEAREST).save(folder / f"{stem}.png")
        lines += [f"## {name}", "", f"![{name}]({stem}.png)", "", "Prompts, row by row:", ""]
        lines += [f"{i + 1}. {c}" for i, c in enumerate(captions)] + [""]
    path = folder / "report.md"
    text = "\n".join(lines).encode()
    atomic_write(path, lambda f: f.write(text), if_exists="overwrite")
    return path

"""Write the .jpg thumbnail beside a workflow file: a grid of the images it produced (run it first with
`conceptkit run WORKFLOW --out DIR`), or, for workflows that need models we do not ship, a diagram of
its nodes and links.

    python scripts/workflow_thumbnail.py workflows/NAME.json --images DIR
    python scripts/workflow_thumbnail.py workflows/NAME_comfy_checkpoint.json
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from PIL import Image, ImageDraw

from conceptkit import NODE_DISPLAY_NAME_MAPPINGS

SIDE = 512
NODE_COLOUR, TEXT_COLOUR, LINK_COLOUR, BACKGROUND = (53, 53, 53), (230, 230, 230), (140, 200, 120), (32, 32, 32)


def image_grid(folder: Path) -> Image.Image:
    images = [Image.open(p).convert("RGB") for p in sorted(folder.rglob("*.png"))[:16]]
    if not images:
        raise SystemExit(f"{folder}: no PNG images; run the workflow into it first")
    columns = min(4, len(images))
    rows = -(-len(images) // columns)
    cell = SIDE // columns
    grid = Image.new("RGB", (SIDE, cell * rows), BACKGROUND)
    for i, image in enumerate(images):
        grid.paste(image.resize((cell, cell), Image.NEAREST), ((i % columns) * cell, (i // columns) * cell))
    return grid


def diagram(workflow: dict) -> Image.Image:
    nodes = {n["id"]: n for n in workflow["nodes"]}
    left = min(n["pos"][0] for n in nodes.values())
    right = max(n["pos"][0] + n["size"][0] for n in nodes.values())
    scale = (SIDE - 40) / (right - left)
    canvas = Image.new("RGB", (SIDE, SIDE // 2), BACKGROUND)
    draw = ImageDraw.Draw(canvas)
    boxes = {}
    for node_id, node in nodes.items():
        x0 = 20 + (node["pos"][0] - left) * scale
        boxes[node_id] = (x0, 80, x0 + node["size"][0] * scale, 180)
    for _, origin, _, target, _, _ in workflow["links"]:
        a, b = boxes[origin], boxes[target]
        draw.line([(a[2], 130), (b[0], 130)], fill=LINK_COLOUR, width=3)
    for node_id, box in boxes.items():
        draw.rounded_rectangle(box, radius=8, fill=NODE_COLOUR, outline=(90, 90, 90))
        kind = nodes[node_id]["type"]
        words = nodes[node_id].get("title") or NODE_DISPLAY_NAME_MAPPINGS.get(kind) or _spaced(kind)
        for row, line in enumerate(_wrap(words, int((box[2] - box[0]) // 7))):
            draw.text((box[0] + 6, box[1] + 8 + 14 * row), line, fill=TEXT_COLOUR)
    return canvas


def _spaced(camel: str) -> str:
    return "".join(" " + c if c.isupper() and i and camel[i - 1].islower() else c for i, c in enumerate(camel))


def _wrap(text: str, width: int) -> list[str]:
    lines: list[str] = []
    for word in text.split():
        if lines and len(lines[-1]) + len(word) < width:
            lines[-1] += " " + word
        else:
            lines.append(word)
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("workflow", type=Path)
    parser.add_argument("--images", type=Path, default=None, help="folder with the images the workflow wrote")
    args = parser.parse_args()
    picture = image_grid(args.images) if args.images else diagram(json.loads(args.workflow.read_text()))
    picture.save(args.workflow.with_suffix(".jpg"), quality=90)
    print(args.workflow.with_suffix(".jpg"))


if __name__ == "__main__":
    main()

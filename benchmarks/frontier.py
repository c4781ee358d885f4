"""The subject-vs-text fidelity frontier plot: one panel per concept kind, one colour per guidance mode,
every point of the sweep as a dot and each mode's Pareto frontier (no point of the mode has both higher
subject and higher text fidelity) as a line. Drawn with PIL, so the bench needs no plotting library."""

from __future__ import annotations

from PIL import Image, ImageDraw

COLOURS = {"personalization": (214, 39, 40), "cfg": (31, 119, 180), "autoguidance": (44, 160, 44)}
PANEL, MARGIN = 360, 48


def pareto_frontier(points: list[tuple[float, float]]) -> list[tuple[float, float]]:
    """The (text, subject) points no other point beats on both, by increasing text fidelity."""
    frontier = [p for p in points if not any(q[0] >= p[0] and q[1] >= p[1] and q != p for q in points)]
    return sorted(set(frontier))


def frontier_plot(rows: list[dict]) -> Image.Image:
    kinds = list(dict.fromkeys(r["concept_kind"] for r in rows))
    xs = [r["text_fidelity"] for r in rows]
    ys = [r["subject_fidelity"] for r in rows]
    x0, x1 = min(xs) - 0.02, max(xs) + 0.02
    y0, y1 = min(ys) - 0.02, max(ys) + 0.02
    image = Image.new("RGB", (len(kinds) * (PANEL + MARGIN) + MARGIN, PANEL + 2 * MARGIN + 20), "white")
    draw = ImageDraw.Draw(image)
    for k, kind in enumerate(kinds):
        left, top = MARGIN + k * (PANEL + MARGIN), MARGIN

        def at(x, y, left=left, top=top):
            return (left + (x - x0) / (x1 - x0) * PANEL, top + PANEL - (y - y0) / (y1 - y0) * PANEL)

        draw.rectangle([left, top, left + PANEL, top + PANEL], outline="black")
        draw.text((left, top - 16), f"{kind} concepts", fill="black")
        draw.text((left, top + PANEL + 4), f"text fidelity {x0:.2f} .. {x1:.2f} ->", fill="black")
        draw.text((left - MARGIN + 4, top), f"{y1:.2f}", fill="black")
        draw.text((left - MARGIN + 4, top + PANEL - 10), f"{y0:.2f}", fill="black")
        for mode, colour in COLOURS.items():
            points = [(r["text_fidelity"], r["subject_fidelity"]) for r in rows
                      if r["concept_kind"] == kind and r["mode"] == mode]
            for x, y in points:
                cx, cy = at(x, y)
                draw.ellipse([cx - 3, cy - 3, cx + 3, cy + 3], fill=colour)
            line = [at(x, y) for x, y in pareto_frontier(points)]
            if len(line) > 1:
                draw.line(line, fill=colour, width=2)
    for i, (mode, colour) in enumerate(COLOURS.items()):
        x = MARGIN + i * 160
        draw.rectangle([x, PANEL + 2 * MARGIN, x + 10, PANEL + 2 * MARGIN + 10], fill=colour)
        draw.text((x + 14, PANEL + 2 * MARGIN - 1), mode, fill="black")
    draw.text((4, 4), "subject fidelity (up) vs text fidelity (right), means over subjects", fill="black")
    return image

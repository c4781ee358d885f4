"""The loss of a run as a picture (a node's second output)."""

from __future__ import annotations

import numpy as np
import torch
from PIL import Image


def loss_curve(losses: list[float], width: int = 512, height: int = 256) -> torch.Tensor:
    """The loss per step (and its running mean) as a ComfyUI IMAGE [1, H, W, 3]."""
    from PIL import ImageDraw

    canvas = Image.new("RGB", (width, height), (24, 24, 24))
    draw = ImageDraw.Draw(canvas)
    if losses:
        values = np.asarray(losses, dtype=np.float64)
        smooth = np.convolve(values, np.ones(max(1, len(values) // 20)) / max(1, len(values) // 20), mode="valid")
        top, bottom = float(np.quantile(values, 0.98)), float(values.min())
        span = max(top - bottom, 1e-12)
        margin = 24

        def points(series):
            n = max(len(series) - 1, 1)
            return [(margin + (width - 2 * margin) * i / n,
                     height - margin - (height - 2 * margin) * (min(v, top) - bottom) / span) for i, v in
                    enumerate(series)]

        draw.line(points(values), fill=(90, 90, 140), width=1)
        draw.line(points(smooth), fill=(240, 200, 80), width=2)
        draw.text((margin, 4), f"loss  first {values[0]:.4f}  last {smooth[-1]:.4f}  steps {len(values)}",
                  fill=(230, 230, 230))
    array = np.asarray(canvas, dtype=np.float32) / 255.0
    return torch.from_numpy(array)[None]


"""Autograd on a model loaded under torch.inference_mode() (ComfyUI runs nodes that way): its weights are
inference tensors, which no gradient may pass through, until they are replaced by ordinary copies."""

from __future__ import annotations

import torch

from .model import Model


def leave_inference_mode(model: Model) -> None:
    """Replace parameters and buffers created under torch.inference_mode() by ordinary tensors."""
    for part in [model.unet, model.vae, *model.text_encoders]:
        for module in part.modules():
            for key, param in list(module._parameters.items()):
                if param is not None and param.is_inference():
                    module._parameters[key] = torch.nn.Parameter(param.clone(), requires_grad=param.requires_grad)
            for key, buffer in list(module._buffers.items()):
                if buffer is not None and buffer.is_inference():
                    module._buffers[key] = buffer.clone()

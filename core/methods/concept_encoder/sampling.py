"""E4T at sampling time (METHODS.md §1): at every step the encoder reads the concept image's features and the
current latent's pooled UNet features, and the trigger's vector becomes that step's e* (one per image of the
batch). Applying an E4T concept adds this as a step hook of the patch service (the concept group 'e4t', in
the methods' table); any sampler of the one
sampling loop (ConceptKit Sample, the Personalization Guidance Sampler) runs it.

Cost: the UNet features come from the unconditional pass that CFG (and personalization guidance) already
run: the pass of step i gives the features the encoder reads at step i+1 (the latent one step noisier than
the paper's). Only the first step, and a guidance that runs no unconditional pass, pay an own pass of the
unconditional branch. Per step the encoder and the prompt's text encoding are added (small beside the UNet).
"""

from __future__ import annotations

import torch

from ...concepts import Concept
from ...model import Conditioning, Model, PatchState
from .encoder import ConceptEncoder, UnetFeatureTap, placeholder_vectors
from .files import GROUP, encoder_from


class EncoderSteps:
    """The step hook of one applied E4T concept."""

    def __init__(self, model: Model, state: PatchState, trigger: str, encoder: ConceptEncoder,
                 image_features: torch.Tensor, class_vectors: list[torch.Tensor], scale: float):
        self.model, self.state, self.trigger = model, state, trigger
        self.encoder, self.scale = encoder.to(model.device), scale
        with torch.no_grad():
            self.image_code = self.encoder.image_code(image_features.to(model.device))
        self.class_vectors = [v.to(model.device) for v in class_vectors]
        self._uncond: torch.Tensor | None = None
        self._features: torch.Tensor | None = None
        self.own_passes = 0  # steps whose features needed a pass of their own (the first one, normally)
        for handle in UnetFeatureTap(model, self._found).attach():
            state.on_exit(handle.remove)

    def _found(self, features: torch.Tensor, context: torch.Tensor | None) -> None:
        """Keep the features of a pass whose first rows are the unconditional branch of the current step."""
        uncond = self._uncond
        if uncond is None or context is None or context.shape[0] < uncond.shape[0]:
            return
        n = uncond.shape[0]
        if torch.equal(context[:n], uncond.to(context)):
            self._features = features[:n]

    def before_step(self, step, latents: torch.Tensor, uncond: Conditioning, denoise) -> None:
        n = latents.shape[0]
        self._uncond = uncond.hidden
        features = self._features
        if features is None or features.shape[0] != n:
            self.own_passes += 1
            denoise(latents, step.timestep, uncond)  # the tap keeps its features
            features = self._features
        self._features = None
        with torch.no_grad():
            offsets = self.encoder.from_code(self.image_code.expand(n, -1), features)
            vectors = placeholder_vectors(offsets, self.class_vectors, self.scale)
        self.state.set_token(self.trigger, [v.to(self.model.dtype) for v in vectors])


def enter_encoder_concept(concept: Concept, model: Model, state: PatchState, strength: float) -> None:
    """Applying an E4T concept: its offsets and plain vector come in as any concept's; this adds the encoder."""
    group = concept.group(GROUP)
    encoder = encoder_from(concept.parameters[GROUP], group)
    classes = [group[f"class.te{i}"] for i in range(len(model.text_encoders))]
    hook = EncoderSteps(model, state, concept.trigger, encoder, group["image_features"], classes,
                        encoder.spec.scale * strength)
    state.add_step_hook(hook)


"""ConceptKit's engine: shared services (model, sampling, ...) and the methods built on them, whose table
(`methods.CONCEPT_GROUPS`) is installed into the services here, once, as the engine loads.

Never imports ComfyUI.
"""

from . import methods

methods.install()

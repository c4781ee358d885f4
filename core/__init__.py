"""ConceptKit's engine: shared services (model, sampling, ...) and the methods built on them.

Never imports ComfyUI.
"""

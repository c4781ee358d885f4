"""Concept Memory (L2DM, METHODS.md §5): concepts learned one after another without forgetting. Not built yet."""

"""Concept Encoder (E4T, METHODS.md §1): personalize from one image with a domain encoder. Not built yet."""

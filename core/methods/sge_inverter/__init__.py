"""SGE Inverter (CRDI, METHODS.md §2): a few images of a new domain -> many diverse ones, without
fine-tuning the model. Not built yet."""

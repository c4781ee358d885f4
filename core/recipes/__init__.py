"""Recipes several methods share, over the services (never a method): the DreamBooth and textual-inversion
baselines as training recipes (with class images drawn by the sampler for prior preservation), and
training previews drawn by the sampler. Services never import recipes; methods and benches may."""

from .dreambooth import RECIPES, class_images, recipe_config, train_recipe
from .previews import TrainingPreview

__all__ = ["RECIPES", "TrainingPreview", "class_images", "recipe_config", "train_recipe"]

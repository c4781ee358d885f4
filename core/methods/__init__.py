"""The five methods, one folder each: its math, defaults and recipes, over the shared services.
Methods never import each other; the services never import a method."""

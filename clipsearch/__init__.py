"""COCO CLIP visual search for the builder and the app, in layers importing downward: core <- hub <- serve <- web."""

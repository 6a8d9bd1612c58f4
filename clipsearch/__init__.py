"""Shared core of COCO CLIP visual search: encoder, artifact format, gallery loading and search."""

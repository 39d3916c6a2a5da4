"""Segmenters: automatic mask generators that turn one image into a set of masks."""

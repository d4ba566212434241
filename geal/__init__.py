"""GEAL: one-pass active learning on images with a general pretrained vision transformer."""

__version__ = "0.1.0"

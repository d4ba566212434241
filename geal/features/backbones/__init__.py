"""Frozen feature models with an importance-map probe (ViTs: CLS attention; CNNs: channel norm)."""

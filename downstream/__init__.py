"""Datasets (image pools, labeled splits) and task trainers."""

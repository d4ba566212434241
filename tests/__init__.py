"""The test suite (a regular package, so that ``tests.conftest`` is this folder's even where an installed
distribution ships a top-level ``tests`` package into site-packages, as mmsegmentation 1.2.2 does)."""

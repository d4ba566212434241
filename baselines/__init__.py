"""Selectors other than GEAL: random, Core-Set, and (later) the traditional active-learning methods."""

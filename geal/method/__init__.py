"""GEAL's method: knowledge clusters (filter + per-image k-means), k-center / D² sampling, the GEAL
selector."""

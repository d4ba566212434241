"""Image pools in their real on-disk formats."""

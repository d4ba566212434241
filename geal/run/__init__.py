"""Running GEAL: the command-line entry points, config schemas, the run loop and its output files."""

"""Reading finished runs: results, tables, plots, figures of what GEAL sees, and run loggers."""

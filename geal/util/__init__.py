"""Small helpers with no GEAL concepts: atomic files and hashes, locks, cores and threads, image decoding."""

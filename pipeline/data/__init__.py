"""Data stage: OXE registry, RLDS I/O, fixtures, curation, statistics, mixtures, training stream."""

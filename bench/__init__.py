"""zsw.bench: benchmark suites run by ``zsw bench``; curated results live in ``bench/results``."""

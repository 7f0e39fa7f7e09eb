"""CALVIN ABC->D evaluation: the benchmark's seeded chains, chain accounting and a thin env binding."""

"""hardscore.v1's ScoringService: request checks (``requests``), reply packing (``replies``)
and the servicer that joins them to the pipeline (``servicer``)."""

"""hardscore server: gRPC scoring service for image classifiers (hardness, mistakenness)."""

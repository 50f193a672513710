"""Offline tools and helpers around the service: ``hardscore-export`` and its float16 pass, the
digits data of the default model, the health probe command and a local server launcher for
tests, demos and benchmarks.

Rule (tests/unit/test_import_rules.py): serving code (the pipeline, the model, the transports,
the process modules) never imports anything here.
"""

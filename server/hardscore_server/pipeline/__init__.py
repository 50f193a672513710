"""The scoring pipeline, the same for every protocol: check, admit, decode, batch, run, score.

Rule (tests/unit/test_import_rules.py): nothing here imports protobuf, grpc, HTTP or the
transports; it imports the configuration, the metrics and the ``model`` room only. A transport
hands the pipeline plain Python and numpy objects and gets plain objects back; domain errors
(``errors``) say what went wrong, and each transport maps them to its own status.
"""

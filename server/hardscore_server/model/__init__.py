"""The model: its directory and manifest (``model_dir``), the ONNX Runtime sessions that run it
(``runner``) and the shared-library checks that explain a missing GPU runtime (``shared_libs``).

Rule (tests/unit/test_import_rules.py): imports the configuration only; nothing of the
pipeline, the transports, protobuf, grpc or HTTP.
"""

"""The wire: hardscore.v1 over gRPC (``hardscore_v1``), the Open Inference Protocol over gRPC and
REST (``inference_protocol``), and what every call shares (``call_gate``, ``calls``,
``statuses``, ``security``, ``health``, ``reflection_v1``, ``metrics_endpoint``).

Rule (tests/unit/test_import_rules.py): transports only translate between their messages and
the pipeline's objects; they import the pipeline, the model and the contract, never the tools
or the process modules (``main``, ``supervisor``). One protocol never imports another's
modules: what both need lives beside them here.
"""

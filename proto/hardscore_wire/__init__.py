"""The hardscore.v1 wire contract, shared by the client and the server.

- ``scoring_pb2`` / ``scoring_pb2_grpc``: the generated protobuf messages and gRPC stubs
  (``make protos`` writes them from proto/hardscore/v1/; never edit them by hand);
- ``tensors``: numpy arrays to and from the wire ``Tensor`` message;
- ``scores``: the names of the per-sample scores the service returns.

Nothing here knows of the server or the client; importing this package imports nothing else.
"""

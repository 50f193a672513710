"""The standard gRPC health check (``grpc.health.v1.Health/Check``) for the client.

The two messages are built from their descriptor in a private descriptor pool, so the client
needs no ``grpcio-health-checking``: that package's releases declare protobuf ranges their own
generated code does not run on (1.71 with protobuf 5.26 to 5.28, for one), and it would pin the
client's protobuf floor. A private pool also never clashes with grpc_health's own registration
of the same names when both are imported in one process (a server and its client in a test).
"""

from __future__ import annotations

from typing import Any

from google.protobuf import descriptor_pb2, descriptor_pool, message_factory

METHOD = "/grpc.health.v1.Health/Check"
SERVING = 1
"""``HealthCheckResponse.ServingStatus.SERVING``; 0 UNKNOWN, 2 NOT_SERVING, 3 SERVICE_UNKNOWN."""
STATUS_NAMES = {0: "UNKNOWN", 1: "SERVING", 2: "NOT_SERVING", 3: "SERVICE_UNKNOWN"}


def _message_classes() -> tuple[Any, Any]:
    fd = descriptor_pb2.FieldDescriptorProto
    file = descriptor_pb2.FileDescriptorProto(
        name="hardscore_client/grpc_health_v1.proto", package="grpc.health.v1", syntax="proto3")
    request = file.message_type.add(name="HealthCheckRequest")
    request.field.add(name="service", number=1, type=fd.TYPE_STRING, label=fd.LABEL_OPTIONAL)
    response = file.message_type.add(name="HealthCheckResponse")
    status = response.enum_type.add(name="ServingStatus")
    for number, name in STATUS_NAMES.items():
        status.value.add(name=name, number=number)
    response.field.add(name="status", number=1, type=fd.TYPE_ENUM, label=fd.LABEL_OPTIONAL,
                       type_name=".grpc.health.v1.HealthCheckResponse.ServingStatus")
    pool = descriptor_pool.DescriptorPool()
    pool.Add(file)
    return (
        message_factory.GetMessageClass(pool.FindMessageTypeByName(
            "grpc.health.v1.HealthCheckRequest")),
        message_factory.GetMessageClass(pool.FindMessageTypeByName(
            "grpc.health.v1.HealthCheckResponse")),
    )


HealthCheckRequest, HealthCheckResponse = _message_classes()


def request(service: str = "") -> bytes:
    """The serialized Check request for ``service`` ("" = the whole server)."""
    return bytes(HealthCheckRequest(service=service).SerializeToString())


def status_of(reply: bytes) -> int:
    """The serving status of a serialized Check reply (1 = SERVING)."""
    return int(HealthCheckResponse.FromString(reply).status)


def check_serving(status: int) -> None:
    """Raises RuntimeError unless ``status`` is SERVING."""
    if status != SERVING:
        name = STATUS_NAMES.get(status, str(status))
        raise RuntimeError(f"server is not serving: status {name}")

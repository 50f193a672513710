"""The Open Inference Protocol (KServe V2), over gRPC (``inference.GRPCInferenceService``, on the
port of hardscore.v1) and over HTTP/REST (its own port, ``http_port``).

Standard inference clients (tritonclient, KServe, perf_analyzer) call the served model through
it. Both transports only translate: ``core`` turns a request's tensors into an ``ImageBatch``
for the image pipeline that serves ScoreImages too (same admission, decoding, batcher and
scores) and hands the scores back as output tensors; docs/inference-protocol.md lists what is
and is not implemented.

Modules: ``tensors`` (input tensors read and checked, transport-neutral), ``model_config``
(served names, metadata, configuration, statistics as Triton's JSON dicts), ``shared_memory``
(system shared memory regions), ``core`` (one request through the pipeline; statistics),
``servicer`` (gRPC), ``rest`` (HTTP/REST); ``grpc_service_pb2*`` are generated from
proto/inference/grpc_service.proto (``make protos``).

Served names (one model, one batcher): ``<model>`` takes ``images`` as FP32 [N, C, H, W] (the
model input, normalised, taken as is: NaN and infinity give NaN scores), UINT8 [N, C, H, W]
(pixels, normalised here) or BYTES [N] / [N, 1] (encoded image files, decoded and resized as
ScoreImages does); ``<model>-pixels`` takes UINT8 ``image_pixels``; ``<model>-files`` takes BYTES
``image_files``. Every name also takes the optional ``label``, INT32 or INT64 [N] or [N, 1]
(class indices, -1 = none). One undecodable image fails the call naming its index.

Outputs, raw when the request was raw: those the request lists in ``outputs``, else all of
them, the label scores only when a ``label`` input was given. Label scores asked for by name
without a ``label`` input are NaN, as for label -1 (clients such as perf_analyzer ask for every
output the metadata lists):

========================  =======  ======  ==============================================
name                      type     shape   meaning
========================  =======  ======  ==============================================
logits                    FP32     [N, K]  the model's output
probabilities             FP64     [N, K]  softmax(logits / temperature)
predicted_class           INT64    [N]     argmax; -1 where the logits are not finite
confidence                FP64     [N]     max probability
margin                    FP64     [N]     top-1 minus top-2 probability
hardness                  FP64     [N]     entropy (nats), FiftyOne's compute_hardness
hardness_normalized       FP64     [N]     hardness / ln K
mistakenness              FP64     [N]     FiftyOne's logits mistakenness (label given)
mistakenness_confidence   FP64     [N]     FiftyOne's default mistakenness (label given)
label_issue_score         FP64     [N]     1 - p(given label) (label given)
margin_issue_score        FP64     [N]     1 - normalized margin (label given)
========================  =======  ======  ==============================================

Scores are FP64 because ``score_logits`` computes them in float64: the numbers are FiftyOne's to
the last bit. Rows without a label (-1) get NaN label scores; non-finite logits give NaN scores.

Errors use the status codes and message wording of Triton, the protocol's reference server:
unknown model or version NOT_FOUND, bad shapes, datatypes and byte sizes INVALID_ARGUMENT, a
full queue or a busy decode budget RESOURCE_EXHAUSTED, an expired deadline DEADLINE_EXCEEDED
(over HTTP: 404, 400, 503, 504; see ``rest``). Unlike Triton, a request may hold more than
``max_batch_size`` images: the batcher splits it across batches.

Statistics count per served name as Triton counts per model: requests (``success``, ``fail``,
queue and compute durations), ``inference_count`` (samples of successful requests) and
``execution_count`` / ``batch_stats`` (batches that held that name's samples; a batch mixing
names counts for each). hardscore.v1 traffic is in none of them (docs/inference-protocol.md).
"""

"""The Open Inference Protocol (KServe V2 gRPC, ``inference.GRPCInferenceService``).

Standard inference clients (tritonclient, KServe, perf_analyzer) call the served model through
this service, on the same port as hardscore.v1. It only translates: the protocol's tensors
become an ``ImageBatch`` for the image pipeline that serves ScoreImages too (same admission,
decoding, batcher and scores), and the scores go back as extra output tensors.

Modules: ``tensors`` (reading input tensors, writing output tensors), ``model_config`` (model
metadata, configuration and statistics), ``servicer`` (the gRPC service); ``grpc_service_pb2*``
are generated from proto/inference/grpc_service.proto (``make protos``).

Inputs of ModelInfer (tensor data in ``raw_input_contents`` or typed ``contents``):

- ``images`` (the manifest's input name), one of
  FP32 ``[N, C, H, W]``: the model input, already normalised (``(pixel / 255 - mean) / std``);
  taken as is, NaN and infinity included (they give NaN scores, never an error);
  UINT8 ``[N, C, H, W]``: pixels 0..255, normalised here with the manifest's mean and std;
  BYTES ``[N]`` or ``[N, 1]``: encoded image files (JPEG, PNG, WebP, BMP, GIF, TIFF), decoded and
  resized here exactly as ScoreImages does. The protocol has no per-sample errors, so one
  undecodable image fails the call with INVALID_ARGUMENT naming its index.
- ``label`` (optional), INT32 or INT64 ``[N]`` or ``[N, 1]``: given class indices, -1 = none.

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
full queue or images over the decode budget together RESOURCE_EXHAUSTED, an expired deadline
DEADLINE_EXCEEDED. Unlike Triton, a request
may hold more than ``max_batch_size`` images: the batcher splits it across batches.

ModelStatistics reports the batcher's cumulative counts, which include ScoreImages traffic (one
model, one batcher). Counts are in samples (images): ``success``, ``queue`` and
``compute_infer`` count samples, and their durations sum each sample's queue wait and the
duration of the batch it ran in, so the averages are per image (per request for batch-1
clients such as perf_analyzer's default).
"""

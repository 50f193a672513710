from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from typing import ClassVar as _ClassVar, Iterable as _Iterable, Mapping as _Mapping, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class DataType(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    DATA_TYPE_UNSPECIFIED: _ClassVar[DataType]
    DATA_TYPE_FLOAT32: _ClassVar[DataType]
    DATA_TYPE_FLOAT64: _ClassVar[DataType]
    DATA_TYPE_INT32: _ClassVar[DataType]
    DATA_TYPE_UINT8: _ClassVar[DataType]
DATA_TYPE_UNSPECIFIED: DataType
DATA_TYPE_FLOAT32: DataType
DATA_TYPE_FLOAT64: DataType
DATA_TYPE_INT32: DataType
DATA_TYPE_UINT8: DataType

class Tensor(_message.Message):
    __slots__ = ("dtype", "shape", "data")
    DTYPE_FIELD_NUMBER: _ClassVar[int]
    SHAPE_FIELD_NUMBER: _ClassVar[int]
    DATA_FIELD_NUMBER: _ClassVar[int]
    dtype: DataType
    shape: _containers.RepeatedScalarFieldContainer[int]
    data: bytes
    def __init__(self, dtype: _Optional[_Union[DataType, str]] = ..., shape: _Optional[_Iterable[int]] = ..., data: _Optional[bytes] = ...) -> None: ...

class LabelIndices(_message.Message):
    __slots__ = ("values",)
    VALUES_FIELD_NUMBER: _ClassVar[int]
    values: _containers.RepeatedScalarFieldContainer[int]
    def __init__(self, values: _Optional[_Iterable[int]] = ...) -> None: ...

class LabelNames(_message.Message):
    __slots__ = ("values",)
    VALUES_FIELD_NUMBER: _ClassVar[int]
    values: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, values: _Optional[_Iterable[str]] = ...) -> None: ...

class GivenLabels(_message.Message):
    __slots__ = ("indices", "names")
    INDICES_FIELD_NUMBER: _ClassVar[int]
    NAMES_FIELD_NUMBER: _ClassVar[int]
    indices: LabelIndices
    names: LabelNames
    def __init__(self, indices: _Optional[_Union[LabelIndices, _Mapping]] = ..., names: _Optional[_Union[LabelNames, _Mapping]] = ...) -> None: ...

class ScoringOptions(_message.Message):
    __slots__ = ("class_names", "temperature", "include_probabilities", "include_logits", "include_embeddings")
    CLASS_NAMES_FIELD_NUMBER: _ClassVar[int]
    TEMPERATURE_FIELD_NUMBER: _ClassVar[int]
    INCLUDE_PROBABILITIES_FIELD_NUMBER: _ClassVar[int]
    INCLUDE_LOGITS_FIELD_NUMBER: _ClassVar[int]
    INCLUDE_EMBEDDINGS_FIELD_NUMBER: _ClassVar[int]
    class_names: _containers.RepeatedScalarFieldContainer[str]
    temperature: float
    include_probabilities: bool
    include_logits: bool
    include_embeddings: bool
    def __init__(self, class_names: _Optional[_Iterable[str]] = ..., temperature: _Optional[float] = ..., include_probabilities: bool = ..., include_logits: bool = ..., include_embeddings: bool = ...) -> None: ...

class ScoreLogitsRequest(_message.Message):
    __slots__ = ("logits", "labels", "ids", "options", "probabilities")
    LOGITS_FIELD_NUMBER: _ClassVar[int]
    LABELS_FIELD_NUMBER: _ClassVar[int]
    IDS_FIELD_NUMBER: _ClassVar[int]
    OPTIONS_FIELD_NUMBER: _ClassVar[int]
    PROBABILITIES_FIELD_NUMBER: _ClassVar[int]
    logits: Tensor
    labels: GivenLabels
    ids: _containers.RepeatedScalarFieldContainer[str]
    options: ScoringOptions
    probabilities: Tensor
    def __init__(self, logits: _Optional[_Union[Tensor, _Mapping]] = ..., labels: _Optional[_Union[GivenLabels, _Mapping]] = ..., ids: _Optional[_Iterable[str]] = ..., options: _Optional[_Union[ScoringOptions, _Mapping]] = ..., probabilities: _Optional[_Union[Tensor, _Mapping]] = ...) -> None: ...

class ScoreLogitsResponse(_message.Message):
    __slots__ = ("scores",)
    SCORES_FIELD_NUMBER: _ClassVar[int]
    scores: Scores
    def __init__(self, scores: _Optional[_Union[Scores, _Mapping]] = ...) -> None: ...

class ScoreLogitsStreamRequest(_message.Message):
    __slots__ = ("chunk",)
    CHUNK_FIELD_NUMBER: _ClassVar[int]
    chunk: ScoreLogitsRequest
    def __init__(self, chunk: _Optional[_Union[ScoreLogitsRequest, _Mapping]] = ...) -> None: ...

class ScoreLogitsStreamResponse(_message.Message):
    __slots__ = ("scores", "first_row")
    SCORES_FIELD_NUMBER: _ClassVar[int]
    FIRST_ROW_FIELD_NUMBER: _ClassVar[int]
    scores: Scores
    first_row: int
    def __init__(self, scores: _Optional[_Union[Scores, _Mapping]] = ..., first_row: _Optional[int] = ...) -> None: ...

class Scores(_message.Message):
    __slots__ = ("num_rows", "ids", "class_names", "predicted_class", "confidence", "margin", "hardness", "hardness_normalized", "given_label", "mistakenness", "mistakenness_confidence", "label_issue_score", "margin_issue_score", "probabilities", "logits", "embeddings")
    NUM_ROWS_FIELD_NUMBER: _ClassVar[int]
    IDS_FIELD_NUMBER: _ClassVar[int]
    CLASS_NAMES_FIELD_NUMBER: _ClassVar[int]
    PREDICTED_CLASS_FIELD_NUMBER: _ClassVar[int]
    CONFIDENCE_FIELD_NUMBER: _ClassVar[int]
    MARGIN_FIELD_NUMBER: _ClassVar[int]
    HARDNESS_FIELD_NUMBER: _ClassVar[int]
    HARDNESS_NORMALIZED_FIELD_NUMBER: _ClassVar[int]
    GIVEN_LABEL_FIELD_NUMBER: _ClassVar[int]
    MISTAKENNESS_FIELD_NUMBER: _ClassVar[int]
    MISTAKENNESS_CONFIDENCE_FIELD_NUMBER: _ClassVar[int]
    LABEL_ISSUE_SCORE_FIELD_NUMBER: _ClassVar[int]
    MARGIN_ISSUE_SCORE_FIELD_NUMBER: _ClassVar[int]
    PROBABILITIES_FIELD_NUMBER: _ClassVar[int]
    LOGITS_FIELD_NUMBER: _ClassVar[int]
    EMBEDDINGS_FIELD_NUMBER: _ClassVar[int]
    num_rows: int
    ids: _containers.RepeatedScalarFieldContainer[str]
    class_names: _containers.RepeatedScalarFieldContainer[str]
    predicted_class: Tensor
    confidence: Tensor
    margin: Tensor
    hardness: Tensor
    hardness_normalized: Tensor
    given_label: Tensor
    mistakenness: Tensor
    mistakenness_confidence: Tensor
    label_issue_score: Tensor
    margin_issue_score: Tensor
    probabilities: Tensor
    logits: Tensor
    embeddings: Tensor
    def __init__(self, num_rows: _Optional[int] = ..., ids: _Optional[_Iterable[str]] = ..., class_names: _Optional[_Iterable[str]] = ..., predicted_class: _Optional[_Union[Tensor, _Mapping]] = ..., confidence: _Optional[_Union[Tensor, _Mapping]] = ..., margin: _Optional[_Union[Tensor, _Mapping]] = ..., hardness: _Optional[_Union[Tensor, _Mapping]] = ..., hardness_normalized: _Optional[_Union[Tensor, _Mapping]] = ..., given_label: _Optional[_Union[Tensor, _Mapping]] = ..., mistakenness: _Optional[_Union[Tensor, _Mapping]] = ..., mistakenness_confidence: _Optional[_Union[Tensor, _Mapping]] = ..., label_issue_score: _Optional[_Union[Tensor, _Mapping]] = ..., margin_issue_score: _Optional[_Union[Tensor, _Mapping]] = ..., probabilities: _Optional[_Union[Tensor, _Mapping]] = ..., logits: _Optional[_Union[Tensor, _Mapping]] = ..., embeddings: _Optional[_Union[Tensor, _Mapping]] = ...) -> None: ...

class ImageSample(_message.Message):
    __slots__ = ("id", "encoded", "pixels", "label_index", "label_name")
    ID_FIELD_NUMBER: _ClassVar[int]
    ENCODED_FIELD_NUMBER: _ClassVar[int]
    PIXELS_FIELD_NUMBER: _ClassVar[int]
    LABEL_INDEX_FIELD_NUMBER: _ClassVar[int]
    LABEL_NAME_FIELD_NUMBER: _ClassVar[int]
    id: str
    encoded: bytes
    pixels: Tensor
    label_index: int
    label_name: str
    def __init__(self, id: _Optional[str] = ..., encoded: _Optional[bytes] = ..., pixels: _Optional[_Union[Tensor, _Mapping]] = ..., label_index: _Optional[int] = ..., label_name: _Optional[str] = ...) -> None: ...

class ScoreImagesRequest(_message.Message):
    __slots__ = ("samples", "options", "model_name", "model_version")
    SAMPLES_FIELD_NUMBER: _ClassVar[int]
    OPTIONS_FIELD_NUMBER: _ClassVar[int]
    MODEL_NAME_FIELD_NUMBER: _ClassVar[int]
    MODEL_VERSION_FIELD_NUMBER: _ClassVar[int]
    samples: _containers.RepeatedCompositeFieldContainer[ImageSample]
    options: ScoringOptions
    model_name: str
    model_version: str
    def __init__(self, samples: _Optional[_Iterable[_Union[ImageSample, _Mapping]]] = ..., options: _Optional[_Union[ScoringOptions, _Mapping]] = ..., model_name: _Optional[str] = ..., model_version: _Optional[str] = ...) -> None: ...

class SampleError(_message.Message):
    __slots__ = ("index", "reason", "message")
    INDEX_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    index: int
    reason: str
    message: str
    def __init__(self, index: _Optional[int] = ..., reason: _Optional[str] = ..., message: _Optional[str] = ...) -> None: ...

class ScoreImagesResponse(_message.Message):
    __slots__ = ("scores", "errors", "model_name", "model_version")
    SCORES_FIELD_NUMBER: _ClassVar[int]
    ERRORS_FIELD_NUMBER: _ClassVar[int]
    MODEL_NAME_FIELD_NUMBER: _ClassVar[int]
    MODEL_VERSION_FIELD_NUMBER: _ClassVar[int]
    scores: Scores
    errors: _containers.RepeatedCompositeFieldContainer[SampleError]
    model_name: str
    model_version: str
    def __init__(self, scores: _Optional[_Union[Scores, _Mapping]] = ..., errors: _Optional[_Iterable[_Union[SampleError, _Mapping]]] = ..., model_name: _Optional[str] = ..., model_version: _Optional[str] = ...) -> None: ...

class ScoreImagesStreamRequest(_message.Message):
    __slots__ = ("chunk",)
    CHUNK_FIELD_NUMBER: _ClassVar[int]
    chunk: ScoreImagesRequest
    def __init__(self, chunk: _Optional[_Union[ScoreImagesRequest, _Mapping]] = ...) -> None: ...

class ScoreImagesStreamResponse(_message.Message):
    __slots__ = ("result", "first_row")
    RESULT_FIELD_NUMBER: _ClassVar[int]
    FIRST_ROW_FIELD_NUMBER: _ClassVar[int]
    result: ScoreImagesResponse
    first_row: int
    def __init__(self, result: _Optional[_Union[ScoreImagesResponse, _Mapping]] = ..., first_row: _Optional[int] = ...) -> None: ...

class GetModelInfoRequest(_message.Message):
    __slots__ = ("model_name", "model_version")
    MODEL_NAME_FIELD_NUMBER: _ClassVar[int]
    MODEL_VERSION_FIELD_NUMBER: _ClassVar[int]
    model_name: str
    model_version: str
    def __init__(self, model_name: _Optional[str] = ..., model_version: _Optional[str] = ...) -> None: ...

class ListModelsRequest(_message.Message):
    __slots__ = ("ready_only",)
    READY_ONLY_FIELD_NUMBER: _ClassVar[int]
    ready_only: bool
    def __init__(self, ready_only: bool = ...) -> None: ...

class ModelVersionState(_message.Message):
    __slots__ = ("name", "version", "state", "reason")
    NAME_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    name: str
    version: str
    state: str
    reason: str
    def __init__(self, name: _Optional[str] = ..., version: _Optional[str] = ..., state: _Optional[str] = ..., reason: _Optional[str] = ...) -> None: ...

class ListModelsResponse(_message.Message):
    __slots__ = ("models",)
    MODELS_FIELD_NUMBER: _ClassVar[int]
    models: _containers.RepeatedCompositeFieldContainer[ModelVersionState]
    def __init__(self, models: _Optional[_Iterable[_Union[ModelVersionState, _Mapping]]] = ...) -> None: ...

class BatchingSettings(_message.Message):
    __slots__ = ("max_batch_size", "max_queue_delay_microseconds", "preferred_batch_sizes", "max_queue_size", "instances")
    MAX_BATCH_SIZE_FIELD_NUMBER: _ClassVar[int]
    MAX_QUEUE_DELAY_MICROSECONDS_FIELD_NUMBER: _ClassVar[int]
    PREFERRED_BATCH_SIZES_FIELD_NUMBER: _ClassVar[int]
    MAX_QUEUE_SIZE_FIELD_NUMBER: _ClassVar[int]
    INSTANCES_FIELD_NUMBER: _ClassVar[int]
    max_batch_size: int
    max_queue_delay_microseconds: int
    preferred_batch_sizes: _containers.RepeatedScalarFieldContainer[int]
    max_queue_size: int
    instances: int
    def __init__(self, max_batch_size: _Optional[int] = ..., max_queue_delay_microseconds: _Optional[int] = ..., preferred_batch_sizes: _Optional[_Iterable[int]] = ..., max_queue_size: _Optional[int] = ..., instances: _Optional[int] = ...) -> None: ...

class GetModelInfoResponse(_message.Message):
    __slots__ = ("name", "version", "class_names", "input_channels", "input_height", "input_width", "mean", "std", "resize", "temperature", "execution_provider", "batching", "weights_provenance", "random_weights", "embedding_dim")
    NAME_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    CLASS_NAMES_FIELD_NUMBER: _ClassVar[int]
    INPUT_CHANNELS_FIELD_NUMBER: _ClassVar[int]
    INPUT_HEIGHT_FIELD_NUMBER: _ClassVar[int]
    INPUT_WIDTH_FIELD_NUMBER: _ClassVar[int]
    MEAN_FIELD_NUMBER: _ClassVar[int]
    STD_FIELD_NUMBER: _ClassVar[int]
    RESIZE_FIELD_NUMBER: _ClassVar[int]
    TEMPERATURE_FIELD_NUMBER: _ClassVar[int]
    EXECUTION_PROVIDER_FIELD_NUMBER: _ClassVar[int]
    BATCHING_FIELD_NUMBER: _ClassVar[int]
    WEIGHTS_PROVENANCE_FIELD_NUMBER: _ClassVar[int]
    RANDOM_WEIGHTS_FIELD_NUMBER: _ClassVar[int]
    EMBEDDING_DIM_FIELD_NUMBER: _ClassVar[int]
    name: str
    version: str
    class_names: _containers.RepeatedScalarFieldContainer[str]
    input_channels: int
    input_height: int
    input_width: int
    mean: _containers.RepeatedScalarFieldContainer[float]
    std: _containers.RepeatedScalarFieldContainer[float]
    resize: str
    temperature: float
    execution_provider: str
    batching: BatchingSettings
    weights_provenance: str
    random_weights: bool
    embedding_dim: int
    def __init__(self, name: _Optional[str] = ..., version: _Optional[str] = ..., class_names: _Optional[_Iterable[str]] = ..., input_channels: _Optional[int] = ..., input_height: _Optional[int] = ..., input_width: _Optional[int] = ..., mean: _Optional[_Iterable[float]] = ..., std: _Optional[_Iterable[float]] = ..., resize: _Optional[str] = ..., temperature: _Optional[float] = ..., execution_provider: _Optional[str] = ..., batching: _Optional[_Union[BatchingSettings, _Mapping]] = ..., weights_provenance: _Optional[str] = ..., random_weights: bool = ..., embedding_dim: _Optional[int] = ...) -> None: ...

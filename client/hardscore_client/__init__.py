"""hardscore client SDK: score logits, probabilities and images against a hardscore server."""

from hardscore_client.client import (
    AsyncScoringClient,
    ProbabilitiesAsLogitsWarning,
    ScoringClient,
    TLSConfig,
)
from hardscore_client.errors import (
    ConnectionFailed,
    InputError,
    InputNotFoundError,
    MissingExtraError,
    ServerUnavailableError,
    WorkflowError,
)
from hardscore_client.messages import MixedVersions, ModelRun, SampleError, ScoreResult
from hardscore_client.probabilities import ProbabilitiesRenormalisedWarning

__all__ = [
    "AsyncScoringClient", "ConnectionFailed", "InputError", "InputNotFoundError",
    "MissingExtraError", "MixedVersions", "ModelRun", "ProbabilitiesAsLogitsWarning",
    "ProbabilitiesRenormalisedWarning", "SampleError", "ScoreResult", "ScoringClient",
    "ServerUnavailableError", "TLSConfig", "WorkflowError",
]

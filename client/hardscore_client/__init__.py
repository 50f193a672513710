"""hardscore client SDK: score logits and images against a hardscore server."""

from hardscore_client.client import AsyncScoringClient, ScoringClient, TLSConfig
from hardscore_client.messages import SampleError, ScoreResult

__all__ = ["AsyncScoringClient", "SampleError", "ScoreResult", "ScoringClient", "TLSConfig"]

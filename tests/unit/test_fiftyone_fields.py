"""hardscore_client.fiftyone_fields without FiftyOne: FiftyOne Brain's mistakenness conventions,
and the rule that only that module imports fiftyone, and only when called."""

from __future__ import annotations

import math

import numpy as np
from test_import_rules import imports, modules

from hardscore_client.fiftyone_fields import fiftyone_mistakenness


def test_mistakenness_conventions():
    certainty = np.array([0.9, 0.9, 0.6, math.nan, math.nan, 0.8])
    predicted = ["cat", "cat", "dog", None, None, "cat"]
    given = ["cat", "dog", None, "cat", None, "zebra"]
    got = fiftyone_mistakenness(certainty, predicted, given)
    np.testing.assert_allclose(got[:3], [0.05, 0.95, 0.2], rtol=0, atol=1e-15)
    assert got[3] == 1.0  # ground truth, no prediction
    assert math.isnan(got[4])  # neither
    assert got[5] == 0.9  # a label that is no class: disagreement


def test_only_fiftyone_fields_imports_fiftyone_and_only_inside_functions():
    anywhere = {name for name, path in modules("hardscore_client")
                if any(t.split(".")[0] == "fiftyone" for t in imports(name, path))}
    assert anywhere == {"hardscore_client.fiftyone_fields"}
    at_import = [t for name, path in modules("hardscore_client")
                 for t in imports(name, path, top_level_only=True)
                 if t.split(".")[0] == "fiftyone"]
    assert not at_import

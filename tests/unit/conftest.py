"""Hypothesis in CI (CI=true, as .ci/run is run): the same examples every run (derandomize), so a landing is
decided by the code, not by which random values a run drew. Local runs keep exploring new values, and a value
they find goes into a test of its own."""

import os

from hypothesis import settings

settings.register_profile("ci", derandomize=True)
if os.environ.get("CI") == "true":
    settings.load_profile("ci")

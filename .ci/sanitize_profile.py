"""pytest plugin for .ci/sanitize: every hypothesis test runs SANITIZE_EXAMPLES
examples (400 unless set; the suite's default is 100), with no deadline under the sanitizers."""

import os

from hypothesis import HealthCheck, settings

settings.register_profile(
    "sanitize",
    max_examples=int(os.environ.get("SANITIZE_EXAMPLES", "400")),
    deadline=None,
    suppress_health_check=list(HealthCheck),
)
settings.load_profile("sanitize")

"""Shared test settings: hypothesis profiles sized for a 2-core machine.

    pytest                               # profile "ci": few examples, deterministic
    HYPOTHESIS_PROFILE=deep pytest       # many more examples, for a deeper run
"""

import os

from hypothesis import HealthCheck, settings

settings.register_profile("ci", max_examples=12, deadline=None, derandomize=True,
                          suppress_health_check=[HealthCheck.too_slow])
settings.register_profile("deep", max_examples=300, deadline=None,
                          suppress_health_check=[HealthCheck.too_slow])
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))

"""The demo: every component on loopback, live traffic, a traffic shift and a breaker trip.

    python -m reference demo sidecar --duration 30
    python -m reference demo nodeagent --rps 100 --no-color

Modules, one role each: `processes` (start and stop a child), `topology` (which children, and
the config they get), `traffic` (requests at a bounded rate), `status` (reading the proxy's
/metrics), `view` (the live view) and `run` (the timeline and the summary).
"""

from reference.demo.run import main

__all__ = ["main"]

"""Model answer: the reference implementation in reference/weighted_router.py is the solution."""
from reference.weighted_router import *  # noqa: F401,F403
from reference.weighted_router import __all__  # noqa: F401

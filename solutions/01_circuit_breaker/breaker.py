"""Model answer: the reference implementation in reference/breaker.py is the solution."""
from reference.breaker import *  # noqa: F401,F403
from reference.breaker import __all__  # noqa: F401

"""Model answer: the reference implementation in reference/drain.py is the solution."""
from reference.drain import *  # noqa: F401,F403
from reference.drain import __all__  # noqa: F401

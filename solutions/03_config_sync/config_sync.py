"""Model answer: the reference implementation in reference/config_sync.py is the solution."""
from reference.config_sync import *  # noqa: F401,F403
from reference.config_sync import __all__  # noqa: F401

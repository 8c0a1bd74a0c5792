"""Every scenario of the lab. Importing a module registers its scenario; this order is run order.

To add one, write bench/scenarios/<name>.py with a `@register`ed `Scenario` subclass and import
it below.
"""

# One import a line, in run order.
from . import data_path  # noqa: F401
from . import resource_cost  # noqa: F401
from . import config_propagation  # noqa: F401
from . import blast_radius  # noqa: F401
from . import rolling_restart  # noqa: F401
from . import noisy_neighbour  # noqa: F401

"""The sample `reviews` app (v1, v2, v3) that the sidecar and the node agent serve.

    python -m reference app --version v2 --port 9080
"""

from reference.app.reviews import VERSIONS, create_app

__all__ = ["VERSIONS", "create_app"]

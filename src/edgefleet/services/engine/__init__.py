"""The task engine (``core.py``): dispatch, with what comes back recorded by ``results.py``
and the periodic round by ``housekeeping.py``; ``attempts.py`` is what an outcome does to an
execution."""

from edgefleet.services.engine.attempts import new_message_id
from edgefleet.services.engine.core import TaskEngine

__all__ = ["TaskEngine", "new_message_id"]

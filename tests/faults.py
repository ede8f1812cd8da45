"""``edgefleet`` with failures injected, run as ``python -m tests.faults serve``: a real server
whose ``GET /api/v1/groups`` and ``POST /api/v1/users`` fail with an unexpected error, for tests
of what an HTTP 500 writes to the log.

The failing call holds ``EDGEFLEET_TEST_SECRET_IN_SCOPE`` in a local variable, as real code
holds tokens and passwords: a traceback that shows local variables would show it.
"""

from __future__ import annotations

import os
from typing import Any, NoReturn

from edgefleet.cli.main import main
from edgefleet.services.accounts import AccountService
from edgefleet.services.fleet import FleetService

FAILURE = "injected failure"


async def _fail(self: object, *args: Any, **kwargs: Any) -> NoReturn:
    held = os.environ["EDGEFLEET_TEST_SECRET_IN_SCOPE"]
    raise RuntimeError(f"{FAILURE} ({len(held)} characters in scope)")


if __name__ == "__main__":  # only then: tests import FAILURE from here
    FleetService.list_groups = _fail  # type: ignore[method-assign]
    AccountService.create_user = _fail  # type: ignore[method-assign]
    main()

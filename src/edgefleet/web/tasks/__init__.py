"""Console pages of groups and tasks (see views.py for the design), two page families:
``groups.py`` (``/console/groups``) and ``tasks.py`` (``/console/tasks``).

``rows.py`` shapes what their templates show (a task's label, target, policy, progress and
actions; a group's counts) and ``reading.py`` reads it from the services, for whom may see it.

Fragments that show progress reload on the event stream's ``refresh`` and, while a task shown
is open, every 5 s (execution starts emit no event). A fragment's root element carries its own
URL (page, filters) and swaps itself whole, so a reload keeps the page the user is on. The
fragment of a task or group deleted meanwhile answers 200 with a "no longer exists" message
(console.js swaps no error in) and no reload of its own; the pages answer 404.
static/tasks.js builds the JSON bodies a plain form cannot (arrays, nested payloads, times).
"""

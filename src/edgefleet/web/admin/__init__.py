"""Console pages of the event log and alarms, API tokens, users, the audit log and settings,
one module each (events.py, tokens.py, users.py, audit.py, settings.py).

As every console page (see views.py for the design): rendered here from the services the API
uses, for the viewer's cookie session; every change goes from the browser to the JSON API
(``/api/v1/events/...``, ``/tokens``, ``/users``), so these pages cannot grant what the API
refuses. Write controls are drawn only for those who may use them.
"""

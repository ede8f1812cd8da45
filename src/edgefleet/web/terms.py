"""Words the console shows for stored values: roles, gateway states, task states, event
types, severities, alarm states, kinds of task. The values stay English in the database and
the API; these marks put them in the translation catalogue, and templates show them with
``{{ _(value) }}`` (or the ``term`` filter, which also lower-cases task states)."""

from __future__ import annotations

from edgefleet.web.i18n import N_

TERMS = (
    # roles
    N_("admin"),
    N_("operator"),
    N_("viewer"),
    # gateway connection states
    N_("online"),
    N_("offline"),
    N_("created"),
    # task and execution states (shown lower-case)
    N_("pending"),
    N_("running"),
    N_("success"),
    N_("failure"),
    N_("revoked"),
    N_("paused"),
    N_("aborted"),
    # event types
    N_("device_online"),
    N_("device_offline"),
    N_("job_update"),
    N_("property_update"),
    N_("gateway_event"),
    N_("device_registered"),
    N_("device_deleted"),
    N_("task_update"),
    # severities and alarm states
    N_("warning"),
    N_("major"),
    N_("critical"),
    N_("open"),
    N_("unacknowledged"),
    N_("acknowledged"),
    N_("cleared"),
    # kinds of task
    N_("group task"),
    N_("rollout"),
    N_("job relay"),
    # audit outcomes, token scopes and states
    N_("denied"),
    N_("active"),
    N_("expired"),
    N_("read"),
    N_("read/write"),
    N_("broker"),
)

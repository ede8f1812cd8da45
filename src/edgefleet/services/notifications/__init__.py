"""Webhook notifications (the original's ``/notifications``): subscriptions, their
confirmation, and the delivery of events to them. See docs/notifications.md.

*Subscribing*: ``create`` checks the request, stores the subscription with a new signing
secret (sealed by the server key), and calls the endpoint once with a signed confirmation
request: 2xx makes it ``Ready``, anything else leaves it ``Pending Confirmation``. Posting
the same event type and endpoint again confirms the same subscription again.

*Queueing*: ``queue_deliveries`` is a hook of the event writer: inside the transaction that
stores a batch of events it inserts one delivery per (event, Ready subscription), its body
fixed then. A cache of the subscribed event types (dropped on every change made here, and
reloaded every ``CACHE_SECONDS`` to see other instances' changes) makes a batch nobody
subscribed to cost a set lookup per event.

*Sending* (``dispatcher.py``): the dispatcher (``run``) is its own worker, never in the
writer's path. The event listener wakes it when a batch queued deliveries, a timer when a
retry falls due. It claims due deliveries with a lease (db/repos/notifications.py), POSTs
each with one shared httpx client, with at most ``webhook_concurrency`` requests in flight
and at most a quarter of them to one receiver (``scheme://host:port``), so a slow or dead
receiver holds up only itself. Every attempt is recorded; a 2xx answer delivers, anything
else is retried after ``backoff_delay`` until ``webhook_max_attempts``, then the delivery
has failed. Finished deliveries are deleted after the events' ``retention_days``.

*Reaching receivers*: every request (confirmations included) goes through an
``services.egress`` client, which connects only to addresses the policy allows, checked at
connect time. An endpoint that resolves to a refused address is refused when subscribing
(400). What an attempt without a status records, and the API shows, is one of two generic
reasons (``domain.webhooks.REFUSED``, ``UNREACHABLE``): whether a port was closed, filtered
or slow is for the server log only, so the answers cannot map a network.

Secrets and signatures are never logged.
"""

from edgefleet.services.notifications.service import (
    Confirmation,
    DeliveryView,
    NotificationService,
    Subscription,
    public_fields,
)

__all__ = [
    "Confirmation",
    "DeliveryView",
    "NotificationService",
    "Subscription",
    "public_fields",
]

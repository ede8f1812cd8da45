"""The server's MQTT transport: one supervised broker link (client.py), the inbound router
(router.py: each message to its service), the request/response relay to gateways
(relay.py) and the per-gateway limits (limits.py). The wire contract is protocol/; broker
management is brokers/."""

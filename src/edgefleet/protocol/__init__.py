"""The ThingsPro remote-control protocol, the wire contract between the server and its
gateways: topics (the only place topic strings are built and parsed), messages (the Sanji
wire models, checked where they come in) and the gateways' TLS-PSK client context. Shared by
the server (mqtt/), the gateway agent and the fleet simulator; it imports nothing of theirs."""

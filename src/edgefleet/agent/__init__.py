"""edgefleet-agent: the gateway side of the remote-control protocol (see issue 3)."""

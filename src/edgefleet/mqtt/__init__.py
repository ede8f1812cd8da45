"""MQTT transport: the ThingsPro remote-control protocol (topics, wire messages), shared by
the server, the gateway agent and the fleet simulator."""

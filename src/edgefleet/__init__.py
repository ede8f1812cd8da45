"""edgefleet: a fleet manager for industrial IoT gateways, compatible with ThingsPro Server."""

__version__ = "0.1.0"

"""Virtual gateways: thousands of real MQTT clients in one asyncio process, for tests and
benchmarks. Each speaks the same protocol as a ThingsPro gateway (``edgefleet.protocol``)."""

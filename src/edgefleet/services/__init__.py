"""Use cases shared by the API, the console, the CLI and (later) MQTT handlers."""

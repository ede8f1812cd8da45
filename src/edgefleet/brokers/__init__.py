"""Broker management: the embedded, supervised Mosquitto (embedded.py) and the configuration
edgefleet writes for the brokers it works with (mosquitto.py, emqx.py; files.py for
the files they share), generated from the settings and the database."""

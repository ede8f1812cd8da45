"""Configuration for the brokers edgefleet works with, generated from the database."""

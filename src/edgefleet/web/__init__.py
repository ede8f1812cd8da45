"""The web console (see views.py)."""

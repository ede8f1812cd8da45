"""Command line: ``edgefleet`` (typer). One module per command group."""

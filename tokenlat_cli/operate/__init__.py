"""Renders of a profile that operate on the data the Collector delivers (tokenlat_cli/artefacts.py lists them)."""

"""The stand-in server (see __main__.py)."""

"""A stand-in for llama-cpp-python in the launcher tests (see server/__main__.py)."""

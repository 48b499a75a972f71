"""A stand-in for Colab's ``google.colab`` package, for the Colab imitation in CI (``make test-colab``).

It has what the kit calls: ``output.enable_custom_widget_manager()`` and ``userdata.get(name)``,
which raises as Colab does when no such secret exists. Nothing here is Google's code.
"""

from google.colab import output, userdata  # noqa: F401

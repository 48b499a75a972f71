"""``google.colab.output``: the custom widget manager switch (a no-op outside Colab)."""

enabled = False


def enable_custom_widget_manager() -> None:
    global enabled
    enabled = True

"""``google.colab.userdata``: Colab's secrets. The imitation holds none."""


class SecretNotFoundError(Exception):
    pass


def get(name: str) -> str:
    raise SecretNotFoundError(name)

"""A trivial job for liveness checks of the worker pool."""


def ping(text: str) -> str:
    return f"pong:{text}"

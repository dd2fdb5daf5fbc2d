"""HTTP-facing errors: a status and a one-line message, rendered as ``{"error": message}``."""


class RequestError(Exception):
    """A request the service refuses; the message tells the client what to change."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message

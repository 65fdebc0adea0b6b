"""The loopback receivers of the notification tests (an HTTP server and an SMTP server)."""
from ..notifications.conftest import _smtp_controller, mailbox, receiver  # noqa: F401 (fixtures)

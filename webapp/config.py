"""Settings from environment variables. Every variable is documented in README.md."""
from __future__ import annotations

import os
from datetime import timedelta
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
INSTANCE = ROOT / "instance"


def _bool(name: str, default: bool) -> bool:
    raw = os.environ.get(name)
    if raw is None:
        return default
    return raw.strip().lower() in {"1", "true", "yes", "on"}


def _secret_key() -> str:
    """A stable key per checkout in development; production sets SECRET_KEY."""
    if os.environ.get("SECRET_KEY"):
        return os.environ["SECRET_KEY"]
    INSTANCE.mkdir(exist_ok=True)
    path = INSTANCE / "secret_key"
    if not path.exists():
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)   # the worker's alone (step sandbox)
        with os.fdopen(fd, "w") as fh:
            fh.write(os.urandom(32).hex())
    return path.read_text().strip()


def _database_url() -> str:
    url = os.environ.get("DATABASE_URL")
    if url:
        # Heroku-style URLs name the old driver; we ship psycopg 3.
        if url.startswith("postgres://"):
            url = "postgresql+psycopg://" + url[len("postgres://"):]
        elif url.startswith("postgresql://"):
            url = "postgresql+psycopg://" + url[len("postgresql://"):]
        return url
    INSTANCE.mkdir(exist_ok=True)
    return f"sqlite:///{INSTANCE / 'ansflow.db'}"


class Config:
    def __init__(self) -> None:
        self.SECRET_KEY = _secret_key()
        # Fernet keys sealing secret variables at rest, comma-separated, the first current; unset: the
        # key in SECRETS_KEY_FILE, made on first use (services/secrets_store.py). Malformed: refused here.
        self.SECRETS_KEY = os.environ.get("ANSFLOW_SECRETS_KEY", "").strip()
        self.SECRETS_KEY_FILE = str(INSTANCE / "secrets_key")
        if self.SECRETS_KEY:
            from .services.secrets_store import SecretsUnavailable, parse_keys
            try:
                parse_keys(self.SECRETS_KEY)
            except SecretsUnavailable as e:
                raise SystemExit(f"error: {e}") from None
        self.SQLALCHEMY_DATABASE_URI = _database_url()
        self.REDIS_URL = os.environ.get("REDIS_URL", "redis://127.0.0.1:6379/0")
        self.BASE_URL = os.environ.get("ANSFLOW_BASE_URL", "http://127.0.0.1:5000")
        self.WORKSPACE_ROOT = os.environ.get("ANSFLOW_WORKSPACE", str(INSTANCE / "workspaces"))
        # bwrap | user | none; unset: the strongest the machine supports (runners/sandbox.py)
        self.STEP_ISOLATION = os.environ.get("ANSFLOW_STEP_ISOLATION", "")
        self.STEP_UIDS = os.environ.get("ANSFLOW_STEP_UIDS", "2000000000-2099999999")
        self.QUEUE_PREFIX = os.environ.get("ANSFLOW_QUEUE_PREFIX", "ansflow")
        self.MAX_RETRIES_CAP = int(os.environ.get("ANSFLOW_MAX_RETRIES_CAP", "10"))
        # Bounded input (issue 15): request bodies (JSON and YAML), steps per pipeline
        self.MAX_BODY_BYTES = int(os.environ.get("ANSFLOW_MAX_BODY_BYTES", str(2 * 1024 * 1024)))
        self.MAX_CONTENT_LENGTH = self.MAX_BODY_BYTES
        self.MAX_STEPS = int(os.environ.get("ANSFLOW_MAX_STEPS", "2000"))
        self.LOG_MAX_BYTES = int(os.environ.get("ANSFLOW_LOG_MAX_BYTES", str(256 * 1024)))
        self.RECONCILE_SECONDS = int(os.environ.get("ANSFLOW_RECONCILE_SECONDS", "15"))
        # how long a worker retries recording a finished step while the database is away
        self.RECORD_RETRY_SECONDS = float(os.environ.get("ANSFLOW_RECORD_RETRY_SECONDS", "600"))
        # a queued attempt whose job RQ will not run is re-queued once it has waited this long
        self.RECONCILE_QUEUED_GRACE_SECONDS = float(os.environ.get("ANSFLOW_RECONCILE_QUEUED_GRACE_SECONDS", "10"))
        # After a step, a worker runs the next step itself (the head of the step queue, or a successor its
        # step unlocks when the queues are empty) instead of going back to RQ (tasks.steps._next_work)
        self.INLINE_SUCCESSORS = os.environ.get("ANSFLOW_INLINE_SUCCESSORS", "1") not in ("0", "false", "no")
        self.HEARTBEAT_SECONDS = int(os.environ.get("ANSFLOW_HEARTBEAT_SECONDS", "5"))
        # Hosts/networks[:port] that outbound requests (notifications, http steps, SMTP) may reach although
        # private: ANSFLOW_OUTBOUND_ALLOWLIST plus its older name ANSFLOW_NOTIFY_ALLOWLIST (netguard.py).
        from .netguard import allowlist_from_env
        self.NOTIFY_ALLOWLIST = allowlist_from_env()
        # seconds between delivery retries of a notification (RQ Retry intervals)
        self.NOTIFY_RETRY_INTERVALS = [int(x) for x in os.environ.get("ANSFLOW_NOTIFY_RETRY_INTERVALS", "10,60,300").split(",") if x.strip()]
        self.SMTP_HOST = os.environ.get("SMTP_HOST", "127.0.0.1")
        self.SMTP_PORT = int(os.environ.get("SMTP_PORT", "25"))
        self.SMTP_USER = os.environ.get("SMTP_USER", "")
        self.SMTP_PASSWORD = os.environ.get("SMTP_PASSWORD", "")
        self.SMTP_TLS = os.environ.get("SMTP_TLS", "none")  # none | starttls | ssl
        self.MAIL_FROM = os.environ.get("MAIL_FROM", "ansflow@localhost")
        # A pooled connection idle this long is pinged before use (database.configure): SQLAlchemy's
        # pool_pre_ping would ping before every transaction, a round trip per step write.
        self.SQLALCHEMY_ENGINE_OPTIONS: dict = {}
        self.DB_PING_AFTER_SECONDS = float(os.environ.get("ANSFLOW_DB_PING_AFTER_SECONDS", "5"))
        self.DB_CONFLICT_RETRIES = int(os.environ.get("ANSFLOW_DB_CONFLICT_RETRIES", "3"))
        self.SESSION_COOKIE_HTTPONLY = True
        self.SESSION_COOKIE_SAMESITE = "Lax"
        self.SESSION_COOKIE_SECURE = _bool("SESSION_COOKIE_SECURE", False)
        self.REMEMBER_COOKIE_HTTPONLY = True
        self.REMEMBER_COOKIE_SAMESITE = "Lax"
        self.REMEMBER_COOKIE_SECURE = self.SESSION_COOKIE_SECURE
        # Flask-Login's default is 365 days; logout and a password change revoke it earlier (User.session_nonce)
        self.REMEMBER_COOKIE_DURATION = timedelta(days=float(os.environ.get("ANSFLOW_REMEMBER_DAYS", "14")))
        # a page's form token lives a working day (a page left open longer is asked to reload)
        self.WTF_CSRF_TIME_LIMIT = int(os.environ.get("ANSFLOW_CSRF_TIME_LIMIT_SECONDS", str(12 * 3600))) or None  # 0: none
        # the demo webhook receiver (notifications) takes posts from anyone: `flask dev` switches it on
        self.DEMO_RECEIVER = _bool("ANSFLOW_DEMO_RECEIVER", False)
        self.TESTING = False

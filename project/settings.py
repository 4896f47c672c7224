"""Settings of the demo project; the only module that reads the environment."""

import os
from datetime import timedelta
from pathlib import Path

import dj_database_url
from django.core.exceptions import ImproperlyConfigured

from executions.layers import channel_layer_config

BASE_DIR = Path(__file__).resolve().parent.parent


def _env_flag(name: str) -> bool:
    return os.environ.get(name, "").strip().lower() in {"1", "true", "yes", "on"}


def _env_list(name: str, default: str) -> list[str]:
    return [item.strip() for item in os.environ.get(name, default).split(",") if item.strip()]


DEBUG = _env_flag("DJANGO_DEBUG")

# Used only in debug mode; Django's deploy check flags the "django-insecure-" prefix.
DEVELOPMENT_SECRET_KEY = "django-insecure-development-only-never-use-this-key-in-production"
SECRET_KEY = os.environ.get("DJANGO_SECRET_KEY", "")
if not SECRET_KEY:
    if not DEBUG:
        raise ImproperlyConfigured(
            "DJANGO_SECRET_KEY is not set. Set it to a long random value, or set DJANGO_DEBUG=1 "
            "to run on the built-in development key."
        )
    SECRET_KEY = DEVELOPMENT_SECRET_KEY

ALLOWED_HOSTS = _env_list("DJANGO_ALLOWED_HOSTS", "localhost,127.0.0.1,[::1]")

# Production behind a TLS-terminating proxy: DJANGO_SECURE=1 turns on everything that
# `manage.py check --deploy` asks of an HTTPS site. The proxy must set X-Forwarded-Proto (and
# strip it from what clients send); without it every request looks like plain HTTP.
SECURE = _env_flag("DJANGO_SECURE")
if SECURE:
    SESSION_COOKIE_SECURE = True
    CSRF_COOKIE_SECURE = True
    SECURE_SSL_REDIRECT = True
    SECURE_PROXY_SSL_HEADER = ("HTTP_X_FORWARDED_PROTO", "https")
    SECURE_HSTS_SECONDS = 365 * 24 * 3600
    SECURE_HSTS_INCLUDE_SUBDOMAINS = True
    SECURE_HSTS_PRELOAD = True
    # Load balancers and Prometheus probe these over plain HTTP, inside the network: a redirect
    # would fail their checks. (SECURE_REDIRECT_EXEMPT matches the path without its first /.)
    SECURE_REDIRECT_EXEMPT = [r"^healthz$", r"^readyz$", r"^metrics$"]

INSTALLED_APPS = [
    "daphne",
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "django.contrib.staticfiles",
    "channels",
    "ninja",
    "axes",
    "executions",
]

MIDDLEWARE = [
    "django.middleware.security.SecurityMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
    # Last, as django-axes asks: turns a lockout into its answer (429 and the message below).
    "axes.middleware.AxesMiddleware",
]

# Password guessing, on /login/ and /admin/login/ alike: django-axes counts failed logins per
# user and client address, and after AXES_FAILURE_LIMIT of them refuses that user from that
# address, even with the right password, for AXES_COOLOFF_TIME. Another user, or the same
# user from elsewhere, is not affected. The address is the one the server reports
# (REMOTE_ADDR): behind a proxy, see the README's "The production environment".
AUTHENTICATION_BACKENDS = [
    "axes.backends.AxesStandaloneBackend",
    "django.contrib.auth.backends.ModelBackend",
]
LOGIN_LOCKOUT_MINUTES = 15
AXES_FAILURE_LIMIT = 5
AXES_COOLOFF_TIME = timedelta(minutes=LOGIN_LOCKOUT_MINUTES)
AXES_LOCKOUT_PARAMETERS = [["username", "ip_address"]]
AXES_RESET_ON_SUCCESS = True
AXES_COOLOFF_MESSAGE = (
    "Too many failed login attempts: this account is locked from your address for "
    f"{LOGIN_LOCKOUT_MINUTES} minutes. Try again later."
)

ROOT_URLCONF = "project.urls"

TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        "DIRS": [],
        "APP_DIRS": True,
        "OPTIONS": {
            "context_processors": [
                "django.template.context_processors.request",
                "django.contrib.auth.context_processors.auth",
                "django.contrib.messages.context_processors.messages",
            ],
        },
    },
]

ASGI_APPLICATION = "project.asgi.application"

DATABASES = {
    "default": dj_database_url.config(
        env="DATABASE_URL",
        default=f"sqlite:///{BASE_DIR / 'db.sqlite3'}",
        conn_max_age=int(os.environ.get("DJANGO_CONN_MAX_AGE", "60")),
        conn_health_checks=True,
    )
}

if DATABASES["default"]["ENGINE"] == "django.db.backends.sqlite3":
    # Several processes (daphne, workers, commands) write to one file: take the write lock at
    # the start of each transaction and wait for it, instead of failing with "database is locked".
    DATABASES["default"]["OPTIONS"] = {
        "transaction_mode": "IMMEDIATE",
        "timeout": 20,
        "init_command": "PRAGMA journal_mode=WAL; PRAGMA synchronous=NORMAL;",
    }

DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

AUTH_PASSWORD_VALIDATORS = [
    {"NAME": "django.contrib.auth.password_validation.MinimumLengthValidator"},
    {"NAME": "django.contrib.auth.password_validation.CommonPasswordValidator"},
]

LANGUAGE_CODE = "en-us"
TIME_ZONE = "UTC"
USE_I18N = True
USE_TZ = True

STATIC_URL = "static/"
STATIC_ROOT = BASE_DIR / "staticfiles"

LOGIN_URL = "/login/"

REDIS_URL = os.environ.get("REDIS_URL", "")
# "pubsub" (the default, see the README's "Choosing a Redis layer") or "core".
REDIS_LAYER = os.environ.get("EXECUTIONS_REDIS_LAYER", "pubsub")
try:
    CHANNEL_LAYERS = {"default": channel_layer_config(REDIS_URL, REDIS_LAYER)}
except ValueError as exc:
    raise ImproperlyConfigured(f"EXECUTIONS_REDIS_LAYER: {exc}") from exc

# The ingest endpoint (POST /api/executions) is refused until this is set.
EXECUTIONS_INGEST_TOKEN = os.environ.get("EXECUTIONS_INGEST_TOKEN", "")

# Operations endpoints and demo features, closed unless opened (see the README's Security).
EXECUTIONS_METRICS_ALLOWED = {
    "networks": _env_list("EXECUTIONS_METRICS_NETWORKS", "127.0.0.0/8,::1"),
    "token": os.environ.get("EXECUTIONS_METRICS_TOKEN", ""),
}
if os.environ.get("EXECUTIONS_API_DOCS", "").strip():
    EXECUTIONS_API_DOCS = _env_flag("EXECUTIONS_API_DOCS")  # unset: with DEBUG only
EXECUTIONS_DEMO_ENABLED = _env_flag("EXECUTIONS_DEMO_ENABLED")
# Seconds between the Server-Sent Events stream's ": heartbeat" comments.
EXECUTIONS_SSE_HEARTBEAT_SECONDS = float(os.environ.get("EXECUTIONS_SSE_HEARTBEAT_SECONDS", "15"))

LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "formatters": {"plain": {"format": "%(asctime)s %(levelname)s %(name)s %(message)s"}},
    "handlers": {"console": {"class": "logging.StreamHandler", "formatter": "plain"}},
    "root": {"handlers": ["console"], "level": "WARNING"},
    "loggers": {"executions": {"level": os.environ.get("EXECUTIONS_LOG_LEVEL", "INFO")}},
}

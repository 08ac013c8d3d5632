"""Django settings for grok2api.

Only this module reads the environment (django-environ, plus an optional `.env`
in the project root). Every variable is documented in `.env.example`.
"""

from __future__ import annotations

import secrets
from pathlib import Path

import environ

BASE_DIR = Path(__file__).resolve().parent.parent

env = environ.Env()
environ.Env.read_env(BASE_DIR / ".env", overwrite=False)

DATA_DIR = Path(env.str("DATA_DIR", default=str(BASE_DIR / "data")))
DATA_DIR.mkdir(parents=True, exist_ok=True)


def _secret_key() -> str:
    """SECRET_KEY from the environment, else one generated once into DATA_DIR."""
    value = env.str("SECRET_KEY", default="")
    if value:
        return value
    path = DATA_DIR / "secret_key"
    if not path.exists():
        path.write_text(secrets.token_urlsafe(50))
        path.chmod(0o600)
    return path.read_text().strip()


SECRET_KEY = _secret_key()
DEBUG = env.bool("DEBUG", default=False)
ALLOWED_HOSTS = env.list("ALLOWED_HOSTS", default=["127.0.0.1", "localhost", "[::1]"])
CSRF_TRUSTED_ORIGINS = env.list("CSRF_TRUSTED_ORIGINS", default=[])

INSTALLED_APPS = [
    "daphne",
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "whitenoise.runserver_nostatic",
    "django.contrib.staticfiles",
    "channels",
    "gateway",
    "pools",
    "calllogs",
    "media_cache",
]

MIDDLEWARE = [
    "grok2api.request_id.RequestIdMiddleware",
    "django.middleware.security.SecurityMiddleware",
    "whitenoise.middleware.WhiteNoiseMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
]

ROOT_URLCONF = "grok2api.urls"
ASGI_APPLICATION = "grok2api.asgi.application"

TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        "DIRS": [BASE_DIR / "templates"],
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

# An empty DATABASE_URL (as in .env.example) means the embedded default.
DATABASES = {
    "default": env.db_url_config(env.str("DATABASE_URL", default="") or f"sqlite:///{DATA_DIR / 'grok2api.sqlite3'}"),
}
if DATABASES["default"]["ENGINE"] == "django.db.backends.sqlite3":
    # Concurrent async requests write from several threads; wait instead of failing. In WAL mode
    # synchronous=NORMAL cannot corrupt the file; a power cut may lose the last commits (usage counts).
    DATABASES["default"].setdefault("OPTIONS", {}).update({
        "timeout": 20, "transaction_mode": "IMMEDIATE",
        "init_command": "PRAGMA journal_mode=WAL; PRAGMA synchronous=NORMAL;",
    })
    DATABASES["default"]["TEST"] = {"NAME": str(DATA_DIR / "test.sqlite3")}
elif DATABASES["default"]["ENGINE"] == "django.db.backends.postgresql":
    # The API runs outside Django's request signals: this backend replaces a broken connection itself.
    DATABASES["default"]["ENGINE"] = "grok2api.db.postgresql"

REDIS_URL = env.str("REDIS_URL", default="")
if REDIS_URL:
    CACHES = {
        "default": {
            "BACKEND": "django_redis.cache.RedisCache",
            "LOCATION": REDIS_URL,
        }
    }
else:
    CACHES = {"default": {"BACKEND": "django.core.cache.backends.locmem.LocMemCache"}}

DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"
LANGUAGE_CODE = "en-us"
TIME_ZONE = "UTC"
USE_I18N = True
USE_TZ = True

STATIC_URL = "static/"
STATIC_ROOT = BASE_DIR / "staticfiles"
STATIC_ROOT.mkdir(exist_ok=True)  # whitenoise warns on a missing root; `collectstatic` fills it
STATICFILES_DIRS = [BASE_DIR / "static"]
STORAGES = {
    "default": {"BACKEND": "django.core.files.storage.FileSystemStorage"},
    "staticfiles": {"BACKEND": "whitenoise.storage.CompressedStaticFilesStorage"},
}
# Admin static files work from a fresh clone without `collectstatic`.
WHITENOISE_USE_FINDERS = True

# Request bodies: chat prompts can be long, but not unbounded.
DATA_UPLOAD_MAX_MEMORY_SIZE = env.int("MAX_REQUEST_BYTES", default=20 * 1024 * 1024)

# --- gateway -----------------------------------------------------------------
HOST = env.str("HOST", default="127.0.0.1")
PORT = env.int("PORT", default=8000)
WEB_CONCURRENCY = env.int("WEB_CONCURRENCY", default=1)
# The ASGI server of `manage.py serve`: uvicorn (uvloop + httptools) or daphne; docs/benchmarks.md says why.
ASGI_SERVER = env.str("ASGI_SERVER", default="uvicorn")
# Quota refresh, recovery probes and proxy health run in every worker (once per interval cluster-wide).
PERIODIC_JOBS = env.bool("PERIODIC_JOBS", default=True)
API_KEYS = [k for k in env.list("API_KEY", default=[]) if k]
GROK_BASE_URL = env.str("GROK_BASE_URL", default="https://grok.com").rstrip("/")
GROK_ASSETS_URL = env.str("GROK_ASSETS_URL", default="https://assets.grok.com").rstrip("/")
# Seconds a lease outlives a worker that died holding it (renewed every third of it while held).
LEASE_TTL = env.float("LEASE_TTL", default=60.0)
# Seconds between writes of use counts and quota debits (batched off the request path; a killed worker loses one).
USAGE_FLUSH_INTERVAL = env.float("USAGE_FLUSH_INTERVAL", default=1.0)

# First values of the admin-edited runtime settings row (`pools.models.RuntimeSettings`).
# Read runtime values only through `pools.settings.get_runtime()` / `aget_runtime()`.
RUNTIME_DEFAULTS = {
    "thinking_format": env.str("THINKING_FORMAT", default="reasoning_content"),
    "show_thinking": env.bool("SHOW_THINKING", default=True),
    "show_search_results": env.bool("SHOW_SEARCH_RESULTS", default=True),
    "first_byte_timeout": env.float("FIRST_BYTE_TIMEOUT", default=30.0),
    "idle_timeout": env.float("IDLE_TIMEOUT", default=60.0),
    "total_timeout": env.float("TOTAL_TIMEOUT", default=600.0),
    "heartbeat_interval": env.float("HEARTBEAT_INTERVAL", default=15.0),
    "max_attempts": env.int("MAX_ATTEMPTS", default=3),
    "account_max_concurrent": env.int("ACCOUNT_MAX_CONCURRENT", default=4),
    "impersonate": env.str("IMPERSONATE", default="chrome136"),
    "user_agent": env.str(
        "USER_AGENT",
        default=(
            "Mozilla/5.0 (Macintosh; Intel Mac OS X 10_15_7) AppleWebKit/537.36 "
            "(KHTML, like Gecko) Chrome/136.0.0.0 Safari/537.36"
        ),
    ),
    "statsig_id": env.str("STATSIG_ID", default=""),
    "cf_clearance": env.str("CF_CLEARANCE", default=""),
    "proxy_url": env.str("PROXY_URL", default=""),
    "max_upstream_streams": env.int("MAX_UPSTREAM_STREAMS", default=1000),
}

LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "filters": {"request_id": {"()": "grok2api.request_id.RequestIdFilter"}},
    "formatters": {
        "plain": {"format": "%(asctime)s %(levelname)s %(name)s [%(request_id)s] %(message)s"},
    },
    "handlers": {
        "console": {
            "class": "grok2api.logs.QueuedStderrHandler",
            "filters": ["request_id"],
            "formatter": "plain",
        },
    },
    "root": {"handlers": ["console"], "level": env.str("LOG_LEVEL", default="INFO")},
    "loggers": {
        "django.request": {"level": "ERROR"},
        "daphne": {"level": "WARNING"},
    },
}

"""Atelier settings, read from the environment.

Development needs no variables at all: SQLite in var/, a Redis the launcher provides, a secret
generated once into var/. Production (ATELIER_MODE=production) refuses to start without a real
SECRET_KEY and turns on every protection `manage.py check --deploy` looks for.
"""

from __future__ import annotations

from pathlib import Path

import dj_database_url
from django.utils.translation import gettext_lazy as _

from config.env import (
    ImproperEnvironment,
    development_secret_key,
    env_bool,
    env_int,
    env_list,
    env_matching,
    env_networks,
    env_str,
)
from gpu_worker.channel_layer import channel_layer_settings

BASE_DIR = Path(__file__).resolve().parent.parent
VAR_DIR = Path(env_str("ATELIER_VAR_DIR", str(BASE_DIR / "var")))

MODE = env_str("ATELIER_MODE", "development")
if MODE not in ("development", "production"):
    raise ImproperEnvironment(f"ATELIER_MODE must be 'development' or 'production', got {MODE!r}")
PRODUCTION = MODE == "production"

DEBUG = env_bool("DEBUG", default=not PRODUCTION)
_secret = env_str("SECRET_KEY")
if not _secret:
    if PRODUCTION:
        raise ImproperEnvironment("SECRET_KEY (or SECRET_KEY_FILE) must be set in production")
    _secret = development_secret_key(VAR_DIR)
SECRET_KEY = _secret
ALLOWED_HOSTS = env_list("ALLOWED_HOSTS", [] if PRODUCTION else ["127.0.0.1", "localhost", "[::1]"])
CSRF_TRUSTED_ORIGINS = env_list("CSRF_TRUSTED_ORIGINS", [])

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
    "rest_framework",
    "rest_framework_tus",
    "drf_spectacular",
    "axes",
    "accounts",
    "generation",
    "gallery",
    "operations",
]

MIDDLEWARE = [
    "django.middleware.security.SecurityMiddleware",
    # WhiteNoise made async-capable: one sync-only middleware puts every request in a thread.
    "config.static_files.AsyncWhiteNoiseMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.locale.LocaleMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    # The member's tier read once per request, however many checks ask (accounts/request_memo.py).
    "config.request_memo.RequestMemoMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
    # A deadlock or lock timeout is 503 + Retry-After, never 500 (webhard).
    "config.transient_errors.TransientDatabaseErrorMiddleware",
    # Reads tus upload headers (resumable model uploads); a malformed number is a 400.
    "config.tus_headers.TusHeaderMiddleware",
    # Last, as django-axes asks: it answers locked-out log-ins.
    "axes.middleware.AxesMiddleware",
]

ROOT_URLCONF = "config.urls"
ASGI_APPLICATION = "config.asgi.application"
WSGI_APPLICATION = None

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
                "django.template.context_processors.i18n",
            ],
        },
    },
]

DATABASES = {
    "default": dj_database_url.parse(
        env_str("DATABASE_URL", f"sqlite:///{VAR_DIR / 'atelier.sqlite3'}"),
        conn_max_age=env_int("DATABASE_CONN_MAX_AGE", 0),
    )
}
DATABASE_POOL_SIZE = env_int("DATABASE_POOL_SIZE", 8)
DATABASE_PREPARE_THRESHOLD = env_int("DATABASE_PREPARE_THRESHOLD", 5)  # PostgreSQL: see below
if DATABASES["default"]["ENGINE"].endswith("postgresql") and DATABASE_POOL_SIZE > 0:
    # A connection pool (psycopg_pool) instead of a connection per request: under ASGI each
    # request runs in a thread of its own, so persistent connections (CONN_MAX_AGE) would be
    # one per short-lived thread, and without either every request pays a new connection
    # (about a third of a REST submission's database time). Per process; 0 turns it off.
    DATABASES["default"]["CONN_MAX_AGE"] = 0  # Django refuses a pool with persistent ones
    DATABASES["default"].setdefault("OPTIONS", {})["pool"] = {
        "min_size": 1,
        "max_size": DATABASE_POOL_SIZE,
        "timeout": 10,  # seconds a request waits for a free connection before failing
    }
if DATABASES["default"]["ENGINE"].endswith("postgresql"):
    # Parameters sent apart from the SQL (psycopg 3's server-side binding), not quoted into
    # it by the client: bench_platform_overhead, the web's CPU per submission 11.4 -> 9.5 ms
    # and saturated submissions 92 -> 101 jobs/s.
    DATABASES["default"].setdefault("OPTIONS", {})["server_side_binding"] = True
    # A statement a pooled connection has run this many times is prepared on it (psycopg 3):
    # PostgreSQL then skips parsing and, once its generic plan holds, planning. A job's way
    # through the platform runs the same fifteen-odd statements every time (the API token,
    # the dispatcher's reads and claim, the settlement): bench_platform_overhead. 0 turns it
    # off: behind a pgbouncer in transaction mode older than 1.21 (or without
    # max_prepared_statements), whose server connections do not keep a client's statements.
    DATABASES["default"]["OPTIONS"]["prepare_threshold"] = DATABASE_PREPARE_THRESHOLD or None
if DATABASES["default"]["ENGINE"].endswith("sqlite3"):
    # Several processes (web, platform worker) share the file: wait for locks instead of failing.
    DATABASES["default"].setdefault("OPTIONS", {})["timeout"] = 20
    # Take the write lock when a transaction starts: a read that later writes cannot then fail
    # at once with "database is locked" (the busy timeout does not cover lock upgrades).
    DATABASES["default"]["OPTIONS"]["transaction_mode"] = "IMMEDIATE"
    # Write-ahead logging: readers (the web, the dispatcher) no longer wait for a writer, and a
    # commit appends to the log with one fsync instead of a rollback journal's several (a
    # small write transaction here 0.77 -> 0.25 ms). synchronous stays FULL, SQLite's default:
    # a commit that returned survives a power cut. The mode stays with the file, which then
    # has -wal and -shm files beside it (copy all three, or `sqlite3 .backup`).
    DATABASES["default"]["OPTIONS"]["init_command"] = "PRAGMA journal_mode=WAL"
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

AUTH_USER_MODEL = "accounts.User"
AUTHENTICATION_BACKENDS = [
    "axes.backends.AxesStandaloneBackend",
    "django.contrib.auth.backends.ModelBackend",
]
PASSWORD_HASHERS = [
    "django.contrib.auth.hashers.Argon2PasswordHasher",
    "django.contrib.auth.hashers.PBKDF2PasswordHasher",
    "django.contrib.auth.hashers.PBKDF2SHA1PasswordHasher",
    "django.contrib.auth.hashers.ScryptPasswordHasher",
]
AUTH_PASSWORD_VALIDATORS = [
    {"NAME": "django.contrib.auth.password_validation.UserAttributeSimilarityValidator"},
    {"NAME": "django.contrib.auth.password_validation.MinimumLengthValidator"},
    {"NAME": "django.contrib.auth.password_validation.CommonPasswordValidator"},
    {"NAME": "django.contrib.auth.password_validation.NumericPasswordValidator"},
]
LOGIN_URL = "login"
LOGIN_REDIRECT_URL = "home"
LOGOUT_REDIRECT_URL = "home"

# Brute-force protection: 5 failures within 15 minutes lock that username from that IP.
AXES_FAILURE_LIMIT = env_int("AXES_FAILURE_LIMIT", 5)
AXES_COOLOFF_TIME = 0.25  # hours
AXES_LOCKOUT_PARAMETERS = [["username", "ip_address"]]
AXES_RESET_ON_SUCCESS = True
AXES_LOCKOUT_TEMPLATE = "registration/locked_out.html"
AXES_ENABLED = env_bool("AXES_ENABLED", True)
# REMOTE_ADDR is already the real client address (see TRUSTED_PROXIES below).
AXES_CLIENT_IP_CALLABLE = "config.client_address.remote_addr"

# --- Request edges (webhard): client address behind proxies, body size -------------------------
# Addresses or networks of the reverse proxies in front of daphne. Only from these is
# X-Forwarded-For believed; REMOTE_ADDR is then the real client for everything (axes, throttles,
# logs). Empty: every peer is the client (no proxy, or one that is not trusted).
TRUSTED_PROXIES = env_networks("TRUSTED_PROXIES")
# The largest request body accepted, checked before Django reads it (config/body_limit.py). The
# default fits the largest advertised upload as base64 in JSON: a 20 MiB PNG for PNG Info is
# 26.7 MiB of base64 (a 10 MiB init image is 13.3 MiB), plus the rest of the request. Set the
# reverse proxy's limit (nginx client_max_body_size) to the same value.
MAX_REQUEST_BODY_BYTES = env_int("MAX_REQUEST_BODY_MB", 30) * 2**20
if MAX_REQUEST_BODY_BYTES <= 0:
    raise ImproperEnvironment("MAX_REQUEST_BODY_MB must be a positive number of MiB")
DATA_UPLOAD_MAX_MEMORY_SIZE = MAX_REQUEST_BODY_BYTES
# --- end of request edges ---------------------------------------------------------------------

LANGUAGE_CODE = "en"
LANGUAGES = [("en", _("English")), ("zh-hans", _("Simplified Chinese"))]
LOCALE_PATHS = [BASE_DIR / "locale"]
TIME_ZONE = "UTC"
USE_I18N = True
USE_TZ = True

STATIC_URL = "static/"
STATIC_ROOT = Path(env_str("STATIC_ROOT", str(BASE_DIR / "staticfiles")))
STATICFILES_DIRS = [BASE_DIR / "static"]
# Development serves static files straight from the app folders (no collectstatic needed).
WHITENOISE_USE_FINDERS = DEBUG
WHITENOISE_AUTOREFRESH = DEBUG
MEDIA_URL = "media/"
MEDIA_ROOT = Path(env_str("MEDIA_ROOT", str(VAR_DIR / "media")))
MODELS_DIR = Path(env_str("MODELS_DIR", str(BASE_DIR / "models")))
# Model architectures whose licence forbids a paid service, enabled by the operator naming the
# licence ("codeformer:S-Lab-1.0"): gpu_worker/face_licences.py.
ALLOW_NONCOMMERCIAL_MODELS = env_str("ATELIER_ALLOW_NONCOMMERCIAL_MODELS", "")
# Members' uploaded models, stored by sha256 (never by the uploader's file name).
MODEL_STORE_DIR = Path(env_str("MODEL_STORE_DIR", str(VAR_DIR / "model-store")))
MODEL_UPLOAD_MAX_MB = env_int("MODEL_UPLOAD_MAX_MB", 8192)
# Workers fetch members' models from the platform by signed URL: the address workers reach the
# web at, and how long a URL in a job message stays valid.
MODEL_DELIVERY_BASE_URL = env_str("MODEL_DELIVERY_BASE_URL", "http://127.0.0.1:8000")
MODEL_DELIVERY_URL_SECONDS = env_int("MODEL_DELIVERY_URL_SECONDS", 3600)
# A training job's signed addresses (dataset images, epoch posts, resume state) live as long as
# a long training may run.
TRAINING_URL_SECONDS = env_int("TRAINING_URL_SECONDS", 7 * 24 * 3600)
# drf-tus (resumable uploads): our upload model, and our handler that checks and stores a
# finished file. Each chunk is one request, so MAX_REQUEST_BODY_MB caps a chunk.
REST_FRAMEWORK_TUS = {
    "UPLOAD_MODEL": "generation.ModelUpload",
    "SAVE_HANDLER_CLASS": "generation.model_uploads.StoreSaveHandler",
    "MAX_FILE_SIZE": MODEL_UPLOAD_MAX_MB * 2**20,
}

# Images go through Django's storage API: local media by default, S3-compatible storage
# (MinIO, R2, S3) when ATELIER_S3_BUCKET is set.
_s3_bucket = env_str("ATELIER_S3_BUCKET")
STORAGES = {
    "default": (
        {
            "BACKEND": "storages.backends.s3.S3Storage",
            "OPTIONS": {
                "bucket_name": _s3_bucket,
                "endpoint_url": env_str("ATELIER_S3_ENDPOINT_URL"),
                "access_key": env_str("ATELIER_S3_ACCESS_KEY"),
                "secret_key": env_str("ATELIER_S3_SECRET_KEY"),
                "default_acl": "private",
                "querystring_auth": True,
            },
        }
        if _s3_bucket
        else {"BACKEND": "django.core.files.storage.FileSystemStorage"}
    ),
    "staticfiles": {
        "BACKEND": (
            "whitenoise.storage.CompressedManifestStaticFilesStorage"
            if PRODUCTION
            else "django.contrib.staticfiles.storage.StaticFilesStorage"
        )
    },
}

REDIS_URL = env_str("REDIS_URL", "redis://127.0.0.1:6379/0")

# Every process must use the same layer (gpu_worker.channel_layer says why and which).
CHANNEL_LAYER = env_str("CHANNEL_LAYER", "")
try:
    CHANNEL_LAYERS = {"default": channel_layer_settings(REDIS_URL, CHANNEL_LAYER)}
except ValueError as error:
    raise ImproperEnvironment(str(error)) from None

EMAIL_BACKEND = env_str(
    "EMAIL_BACKEND",
    "django.core.mail.backends.smtp.EmailBackend"
    if PRODUCTION
    else "django.core.mail.backends.console.EmailBackend",
)
EMAIL_HOST = env_str("EMAIL_HOST", "localhost")
EMAIL_PORT = env_int("EMAIL_PORT", 25)
EMAIL_HOST_USER = env_str("EMAIL_HOST_USER", "")
EMAIL_HOST_PASSWORD = env_str("EMAIL_HOST_PASSWORD", "")
EMAIL_USE_TLS = env_bool("EMAIL_USE_TLS", False)
DEFAULT_FROM_EMAIL = env_str("DEFAULT_FROM_EMAIL", "Atelier <noreply@localhost>")

# Stripe Checkout for credit packs and memberships. Both empty (the default): the shop says
# payments are off and everything else works.
STRIPE_SECRET_KEY = env_str("STRIPE_SECRET_KEY", "")
# Bearer token a Prometheus scraper sends to /metrics (staff sessions need none); unset: staff only.
METRICS_TOKEN = env_str("METRICS_TOKEN", "")
STRIPE_WEBHOOK_SECRET = env_str("STRIPE_WEBHOOK_SECRET", "")

REST_FRAMEWORK: dict[str, object] = {
    "DEFAULT_AUTHENTICATION_CLASSES": [
        "accounts.authentication.BearerTokenAuthentication",
        "accounts.authentication.BasicTokenAuthentication",
        "rest_framework.authentication.SessionAuthentication",
    ],
    "DEFAULT_PERMISSION_CLASSES": ["rest_framework.permissions.IsAuthenticated"],
    # JSON in and out, errors included, whoever asks: /api/docs/ is the page for browsers.
    "DEFAULT_PARSER_CLASSES": [
        "config.api_parsers.JSONObjectParser",
        "rest_framework.parsers.FormParser",
        "rest_framework.parsers.MultiPartParser",
    ],
    "DEFAULT_RENDERER_CLASSES": ["rest_framework.renderers.JSONRenderer"],
    "DEFAULT_SCHEMA_CLASS": "drf_spectacular.openapi.AutoSchema",
    "EXCEPTION_HANDLER": "config.api_errors.json_exception_handler",
}
SPECTACULAR_SETTINGS = {
    "TITLE": "Atelier API",
    "DESCRIPTION": "Generate images, follow jobs and manage your account from scripts.",
    "VERSION": "1.0.0",
    "SERVE_INCLUDE_SCHEMA": False,
}

# --- sign-up, e-mail verification, social log-in, rate limits (django-allauth, DRF) ----------
# Sign-up, e-mail confirmation and social log-in are django-allauth's; log-in, log-out and
# password reset stay Django's own views with django-axes. No credits are granted (welcome or
# periodic) to a member without a verified address while verification is on.
INSTALLED_APPS += ["allauth", "allauth.account", "allauth.socialaccount"]
MIDDLEWARE.insert(
    MIDDLEWARE.index("axes.middleware.AxesMiddleware"),
    "allauth.account.middleware.AccountMiddleware",
)
EMAIL_VERIFICATION = env_bool("EMAIL_VERIFICATION", default=not DEBUG)
ACCOUNT_EMAIL_VERIFICATION = "mandatory" if EMAIL_VERIFICATION else "none"
ACCOUNT_SIGNUP_FIELDS = ["username*", "email*", "password1*", "password2*"]
ACCOUNT_LOGIN_METHODS = {"username"}
ACCOUNT_PREVENT_ENUMERATION = True
ACCOUNT_LOGIN_ON_EMAIL_CONFIRMATION = True
ACCOUNT_CONFIRM_EMAIL_ON_GET = False
ACCOUNT_ADAPTER = "accounts.signup.AccountAdapter"
SOCIALACCOUNT_ADAPTER = "accounts.signup.SocialAccountAdapter"
_ALLAUTH_RATE = r"\d+/\d*[smhd]/(ip|user|key)"
ACCOUNT_RATE_LIMITS = {
    # Per client address (REMOTE_ADDR: see ALLAUTH_TRUSTED_PROXY_COUNT below).
    "signup": env_matching(
        "SIGNUP_RATE_LIMIT",
        "5/h/ip,20/d/ip",
        rf"{_ALLAUTH_RATE}(,{_ALLAUTH_RATE})*",
        "5/h/ip,20/d/ip",
    ),
    # Log-in failures are django-axes' job (AXES_* above); allauth's log-in view is not used.
    "login_failed": None,
}
# Throttles key on REMOTE_ADDR, which the ASGI layer sets to the real client behind trusted
# proxies; no forwarded header is parsed here.
ALLAUTH_TRUSTED_PROXY_COUNT = 0
# A sign-up is flagged for review when this many (or more) came from its address within a day,
# or its e-mail domain is a known disposable one (built-in list plus this setting).
SIGNUP_FLAG_SAME_ADDRESS = env_int("SIGNUP_FLAG_SAME_ADDRESS", 3)
SIGNUP_DISPOSABLE_DOMAINS = env_list("SIGNUP_DISPOSABLE_DOMAINS", [])

# Social log-in: a provider is offered only when both its client id and secret are set.
_SOCIAL_SCOPES = {
    "google": ["profile", "email"],
    "github": ["user:email"],
    "discord": ["identify", "email"],
}
SOCIALACCOUNT_PROVIDERS: dict[str, dict[str, object]] = {}
for _provider, _scope in _SOCIAL_SCOPES.items():
    _client_id = env_str(f"{_provider.upper()}_CLIENT_ID", "")
    _client_secret = env_str(f"{_provider.upper()}_CLIENT_SECRET", "")
    if _client_id and _client_secret:
        INSTALLED_APPS.append(f"allauth.socialaccount.providers.{_provider}")
        SOCIALACCOUNT_PROVIDERS[_provider] = {
            "APP": {"client_id": _client_id, "secret": _client_secret},
            "SCOPE": _scope,
        }
SOCIALACCOUNT_EMAIL_AUTHENTICATION = False  # never attach a social log-in to an existing account
SOCIALACCOUNT_LOGIN_ON_GET = False

# Rate-limit state (sign-up, redeem, API) lives in Redis so every web process shares it; with
# Redis unreachable, limits are not enforced rather than requests failing (config/cache.py).
CACHES = {
    "default": {
        "BACKEND": "config.cache.FailOpenRedisCache",
        "LOCATION": REDIS_URL,
        "KEY_PREFIX": "atelier",
        "OPTIONS": {
            "socket_connect_timeout": 1,
            "socket_timeout": 1,
            "pool_class": "config.cache.SharedConnectionPool",
        },
    }
}


def _drf_rate(name: str, default: str) -> str:
    return env_matching(name, default, r"\d+/(s|sec|second|m|min|minute|h|hour|d|day)", "10/hour")


REST_FRAMEWORK.update(
    {
        "NUM_PROXIES": 0,
        "DEFAULT_THROTTLE_CLASSES": [
            "accounts.throttles.TierUserThrottle",
            "accounts.throttles.AnonAddressThrottle",
        ],
        "DEFAULT_THROTTLE_RATES": {
            # Members: their tier's requests per minute, this when the tier sets none.
            "user": _drf_rate("API_THROTTLE_USER", "240/min"),
            "anon": _drf_rate("API_THROTTLE_ANON", "60/min"),
            "redeem_user": _drf_rate("REDEEM_THROTTLE_USER", "10/hour"),
            "redeem_address": _drf_rate("REDEEM_THROTTLE_ADDRESS", "30/hour"),
            # Resumable model uploads: one request per chunk, so their own, larger budget.
            "model_upload": _drf_rate("MODEL_UPLOAD_THROTTLE", "600/min"),
        },
    }
)

LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "handlers": {"console": {"class": "logging.StreamHandler"}},
    "root": {"handlers": ["console"], "level": env_str("LOG_LEVEL", "INFO")},
}

SECURE_CONTENT_TYPE_NOSNIFF = True
SESSION_COOKIE_HTTPONLY = True
X_FRAME_OPTIONS = "DENY"
if PRODUCTION:
    SESSION_COOKIE_SECURE = True
    CSRF_COOKIE_SECURE = True
    SECURE_SSL_REDIRECT = env_bool("SECURE_SSL_REDIRECT", True)
    SECURE_HSTS_SECONDS = env_int("SECURE_HSTS_SECONDS", 31536000)
    SECURE_HSTS_INCLUDE_SUBDOMAINS = True
    SECURE_HSTS_PRELOAD = env_bool("SECURE_HSTS_PRELOAD", True)
    if env_bool("BEHIND_TLS_PROXY", True):
        SECURE_PROXY_SSL_HEADER = ("HTTP_X_FORWARDED_PROTO", "https")

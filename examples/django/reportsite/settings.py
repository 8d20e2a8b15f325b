"""Settings of the Django example (docs/guides/django.md): no database (the toy sign-in keeps the
user in a signed session cookie), and Herald's three settings from the environment."""

import os
import secrets

# Where this backend reaches Herald, and where the browser does (the same unless Herald is
# behind a proxy or known by another name from the browser's side).
HERALD_URL = os.environ["HERALD_URL"]
HERALD_PUBLIC_URL = os.environ.get("HERALD_PUBLIC_URL", HERALD_URL)
HERALD_API_KEY = os.environ["HERALD_API_KEY"]
HERALD_SECRET = os.environ["HERALD_SECRET"]

SECRET_KEY = os.environ.get("DJANGO_SECRET_KEY") or secrets.token_urlsafe(50)
DEBUG = os.environ.get("DJANGO_DEBUG") == "1"
# "testserver" is the host of Django's test client.
ALLOWED_HOSTS = ["127.0.0.1", "localhost", "testserver"]

INSTALLED_APPS = ["reports"]
MIDDLEWARE = [
    "django.middleware.security.SecurityMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
]
SESSION_ENGINE = "django.contrib.sessions.backends.signed_cookies"
ROOT_URLCONF = "reportsite.urls"
TEMPLATES = [{"BACKEND": "django.template.backends.django.DjangoTemplates", "APP_DIRS": True}]
DATABASES = {}
USE_TZ = True

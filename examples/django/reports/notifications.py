"""The app's one Herald client (it keeps a pool of connections to Herald): import it from here."""

from django.conf import settings

from herald import Herald

herald = Herald(settings.HERALD_URL, api_key=settings.HERALD_API_KEY, secret=settings.HERALD_SECRET)

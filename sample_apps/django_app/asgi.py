import os

from secure_mw.contrib.django import get_asgi_application

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "sample_apps.django_app.settings")
application = get_asgi_application()

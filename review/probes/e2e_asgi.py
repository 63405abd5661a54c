"""tests.e2e_app's ASGI app as a module attribute, for hypercorn (review probe)."""

from tests.e2e_app import asgi_app

app = asgi_app()

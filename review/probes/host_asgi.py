"""Module-level app for hypercorn (review probe)."""

from review.probes.host_apps import asgi_app

app = asgi_app()

"""A small Django project protected by secure_mw: ``python -m sample_apps.django_app``."""

"""The Django app of secure_mw: ``"secure_mw.contrib.django"`` in ``INSTALLED_APPS``."""

from __future__ import annotations

from django.apps import AppConfig


class SecureMWConfig(AppConfig):  # type: ignore[misc]  # Django ships no type hints
    name = "secure_mw.contrib.django"
    label = "secure_mw"
    verbose_name = "secure_mw"

    def ready(self) -> None:
        from django.core import checks

        from secure_mw.contrib.django.checks import check_glue, check_settings

        checks.register(check_settings, checks.Tags.security)
        checks.register(check_glue, checks.Tags.security)

"""A small Flask app protected by secure_mw (docs: README.md in this directory).

``create_app()`` is the factory ``flask --app sample_apps.flask_app run`` and
``gunicorn 'sample_apps.flask_app:create_app()'`` call; ``python -m sample_apps.flask_app``
prepares its state, prints the demo passwords and serves it.
"""

from sample_apps.flask_app.app import create_app, prepare

__all__ = ["create_app", "prepare"]

"""A small FastAPI app protected by secure_mw.contrib.fastapi: an admin-only page, a JSON API
and a page that needs two factors (``python -m sample_apps.fastapi_app``; see README.md)."""

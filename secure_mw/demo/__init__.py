"""The demo that ``secure-mw demo`` runs: a small WSGI app inside the whole protect() stack,
served by Werkzeug's development server, so it needs nothing beyond a plain install."""

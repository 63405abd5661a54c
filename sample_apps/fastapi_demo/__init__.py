"""The demo: a FastAPI app protected by what secure_mw offers so far."""

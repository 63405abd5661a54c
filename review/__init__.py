"""Reproductions of the outside review of the regulation and users-file changes."""

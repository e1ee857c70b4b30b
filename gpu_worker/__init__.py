"""Atelier GPU worker: Django-free engine process (see protocol.py for its contract)."""

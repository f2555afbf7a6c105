"""Executors shipped with orchestra-nb."""

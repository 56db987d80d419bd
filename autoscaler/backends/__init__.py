"""Backends that run replicas: ``local`` (processes on this machine, with a warm pool)."""

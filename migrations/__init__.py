"""Alembic migrations for capreg; run through `capreg migrate` (registry.store.migrate)."""

"""Persistence: SQLAlchemy tables, repositories and migrations. The only layer that imports sqlalchemy."""

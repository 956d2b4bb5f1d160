"""Use cases: registration and discovery. No grpc and no sqlalchemy here."""

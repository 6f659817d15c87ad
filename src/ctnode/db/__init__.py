"""Database: typed models, engine/session factory, migrations."""

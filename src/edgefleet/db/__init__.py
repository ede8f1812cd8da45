"""Storage: SQLAlchemy tables, repositories (the only SQL), engine and migrations."""

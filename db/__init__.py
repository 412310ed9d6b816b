"""Storage for human evaluation: SQLAlchemy 2 models, the engine with its SQLite discipline, migrations.

    from db import Database
    database = Database()                 # DATABASE_URL, else data/hirpf.sqlite3 (HIRPF_DATA_DIR moves it)
    with database.read() as session: ...  # reads run concurrently
    database.write(lambda session: ...)   # every write goes through here: one transaction, one writer
"""
from db.connection import Database, database_url

__all__ = ["Database", "database_url"]

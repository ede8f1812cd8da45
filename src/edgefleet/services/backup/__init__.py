"""``edgefleet backup`` and ``edgefleet restore``: the database and the file store in one archive
(``create.py``, ``restore.py``; ``manifest.py`` the archive's manifest, ``common.py`` what both
share).

The archive is a gzip'd tar, mode 600, with flat member names::

    database.sqlite3 | database.pgdump   a copy made by SQLite's online backup API, or
                                         ``pg_dump --format=custom`` (the field's own tools)
    files/<key>                          every file the ``files`` table of that copy names
    secret.key                           only when the server key is a key file in data_dir
    manifest.json                        last: versions, schema revision, rows per table, the
                                         stored files, size and SHA-256 of every member, and
                                         the SHA-256 of the manifest itself

Consistency: the database is copied first, as one snapshot (SQLite's backup API; for
PostgreSQL a REPEATABLE READ transaction exports its snapshot and ``pg_dump --snapshot`` dumps
exactly that, while the same transaction reads the rows per table and the ``files`` rows).
Stored files never change once written (a key is random and never rewritten, only deleted),
so copying afterwards every file that snapshot references gives a consistent pair, each
checked against the size and SHA-256 its row records. A file uploaded after the snapshot is
not referenced by it and not copied; a referenced file deleted in between (a firmware image
removed during the backup) fails the backup, which can simply be run again.

Restore checks everything before it changes anything: the archive (gzip CRC, every member's
size and SHA-256, the manifest's own digest), the schema revision (known to this edgefleet:
it is migrated to head afterwards), the database kind, the server key, a running server,
data in the target (replaced only when asked). Then: files into the configured store (local
or S3, whatever the backup came from), the database, the key file, the migrations.
"""

from edgefleet.services.backup.common import (
    BackupError,
    EngineFactory,
    StoreFactory,
    find_pg_tools,
    masked_url,
    pg_environment,
    sqlite_path,
)
from edgefleet.services.backup.create import BackupResult, create_backup
from edgefleet.services.backup.manifest import Manifest, key_fingerprint
from edgefleet.services.backup.restore import RestoreResult, restore_backup

__all__ = [
    "BackupError",
    "BackupResult",
    "EngineFactory",
    "Manifest",
    "RestoreResult",
    "StoreFactory",
    "create_backup",
    "find_pg_tools",
    "key_fingerprint",
    "masked_url",
    "pg_environment",
    "restore_backup",
    "sqlite_path",
]

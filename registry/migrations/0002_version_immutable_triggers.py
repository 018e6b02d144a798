"""The database itself refuses UPDATE of prompt versions, and DELETE unless a purge opted in.

Deleting is only possible inside `registry.services.organisation_prompts_purge` (removing a whole
organisation's prompts, e.g. the benchmark's throwaway data): on PostgreSQL it sets the
transaction-local setting steward.allow_version_delete; on SQLite it inserts a row into
registry_version_delete_allowed and removes it in the same transaction (SQLite triggers on
main tables cannot see temp tables or settings).
"""

from django.db import migrations

from core.migration_ops import vendor_sql

PG_FORWARD = """
CREATE OR REPLACE FUNCTION registry_version_immutable() RETURNS trigger AS $$
BEGIN
    IF TG_OP = 'DELETE' AND current_setting('steward.allow_version_delete', true) = 'on' THEN
        RETURN OLD;
    END IF;
    RAISE EXCEPTION 'registry_promptversion is immutable: %% refused', TG_OP USING ERRCODE = 'insufficient_privilege';
END;
$$ LANGUAGE plpgsql;
CREATE TRIGGER registry_version_no_update BEFORE UPDATE ON registry_promptversion
    FOR EACH ROW EXECUTE FUNCTION registry_version_immutable();
CREATE TRIGGER registry_version_no_delete BEFORE DELETE ON registry_promptversion
    FOR EACH ROW EXECUTE FUNCTION registry_version_immutable();
"""
PG_BACKWARD = """
DROP TRIGGER IF EXISTS registry_version_no_update ON registry_promptversion;
DROP TRIGGER IF EXISTS registry_version_no_delete ON registry_promptversion;
DROP FUNCTION IF EXISTS registry_version_immutable();
"""
SQLITE_FORWARD = [
    "CREATE TABLE registry_version_delete_allowed (x integer);",
    """CREATE TRIGGER registry_version_no_update BEFORE UPDATE ON registry_promptversion
       BEGIN SELECT RAISE(ABORT, 'registry_promptversion is immutable: UPDATE refused'); END;""",
    """CREATE TRIGGER registry_version_no_delete BEFORE DELETE ON registry_promptversion
       WHEN NOT EXISTS (SELECT 1 FROM registry_version_delete_allowed)
       BEGIN SELECT RAISE(ABORT, 'registry_promptversion is immutable: DELETE refused'); END;""",
]
SQLITE_BACKWARD = [
    "DROP TRIGGER IF EXISTS registry_version_no_update;",
    "DROP TRIGGER IF EXISTS registry_version_no_delete;",
    "DROP TABLE IF EXISTS registry_version_delete_allowed;",
]


class Migration(migrations.Migration):
    dependencies = [("registry", "0001_initial")]
    operations = [
        vendor_sql(
            pg_forward=PG_FORWARD,
            pg_backward=PG_BACKWARD,
            sqlite_forward=SQLITE_FORWARD,
            sqlite_backward=SQLITE_BACKWARD,
        )
    ]

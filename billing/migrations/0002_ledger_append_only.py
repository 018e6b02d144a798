"""The database refuses UPDATE and DELETE of ledger lines and UPDATE of prices: costs already
recorded, and the prices they were computed with, are never rewritten."""

from django.db import migrations

from core.migration_ops import vendor_sql

PG_FORWARD = """
CREATE OR REPLACE FUNCTION billing_append_only() RETURNS trigger AS $$
BEGIN
    RAISE EXCEPTION '%% is append-only: %% refused', TG_TABLE_NAME, TG_OP USING ERRCODE = 'insufficient_privilege';
END;
$$ LANGUAGE plpgsql;
CREATE TRIGGER billing_usageline_no_update BEFORE UPDATE ON billing_usageline
    FOR EACH ROW EXECUTE FUNCTION billing_append_only();
CREATE TRIGGER billing_usageline_no_delete BEFORE DELETE ON billing_usageline
    FOR EACH ROW EXECUTE FUNCTION billing_append_only();
CREATE TRIGGER billing_price_no_update BEFORE UPDATE ON billing_price
    FOR EACH ROW EXECUTE FUNCTION billing_append_only();
"""
PG_BACKWARD = """
DROP TRIGGER IF EXISTS billing_usageline_no_update ON billing_usageline;
DROP TRIGGER IF EXISTS billing_usageline_no_delete ON billing_usageline;
DROP TRIGGER IF EXISTS billing_price_no_update ON billing_price;
DROP FUNCTION IF EXISTS billing_append_only();
"""
SQLITE_FORWARD = [
    """CREATE TRIGGER billing_usageline_no_update BEFORE UPDATE ON billing_usageline
       BEGIN SELECT RAISE(ABORT, 'billing_usageline is append-only: UPDATE refused'); END;""",
    """CREATE TRIGGER billing_usageline_no_delete BEFORE DELETE ON billing_usageline
       BEGIN SELECT RAISE(ABORT, 'billing_usageline is append-only: DELETE refused'); END;""",
    """CREATE TRIGGER billing_price_no_update BEFORE UPDATE ON billing_price
       BEGIN SELECT RAISE(ABORT, 'billing_price is append-only: UPDATE refused'); END;""",
]
SQLITE_BACKWARD = [
    "DROP TRIGGER IF EXISTS billing_usageline_no_update;",
    "DROP TRIGGER IF EXISTS billing_usageline_no_delete;",
    "DROP TRIGGER IF EXISTS billing_price_no_update;",
]


class Migration(migrations.Migration):
    dependencies = [("billing", "0001_initial")]
    operations = [
        vendor_sql(
            pg_forward=PG_FORWARD,
            pg_backward=PG_BACKWARD,
            sqlite_forward=SQLITE_FORWARD,
            sqlite_backward=SQLITE_BACKWARD,
        )
    ]

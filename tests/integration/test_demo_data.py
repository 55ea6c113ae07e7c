"""Demo data: realistic shape, referential integrity, asset files that match their metadata."""

from __future__ import annotations

import hashlib
from pathlib import Path

from tests.helpers import owner_connection
from wedsync_dr_dev import local_stack


def test_row_counts_match_the_report(stack, demo_data):
    with owner_connection(stack) as conn:
        for table, expected in demo_data.rows.items():
            assert conn.execute(f"SELECT count(*) FROM wedsync.{table}").fetchone()[0] == expected, table
    assert demo_data.rows["weddings"] == 200
    assert demo_data.rows["guests"] > 200 * 40


def test_foreign_keys_hold_although_the_load_skipped_their_triggers(stack, demo_data):
    """The bulk load runs with session_replication_role=replica; prove every FK is satisfied anyway."""
    with owner_connection(stack) as conn:
        fks = conn.execute("""
            SELECT con.conrelid::regclass, a.attname, con.confrelid::regclass, af.attname
            FROM pg_constraint con
            JOIN pg_attribute a ON a.attrelid = con.conrelid AND a.attnum = con.conkey[1]
            JOIN pg_attribute af ON af.attrelid = con.confrelid AND af.attnum = con.confkey[1]
            WHERE con.contype = 'f' AND con.connamespace = 'wedsync'::regnamespace""").fetchall()
        assert len(fks) >= 20
        for child, column, parent, parent_column in fks:
            orphans = conn.execute(
                f"SELECT count(*) FROM {child} c WHERE c.{column} IS NOT NULL AND NOT EXISTS "
                f"(SELECT 1 FROM {parent} p WHERE p.{parent_column} = c.{column})").fetchone()[0]
            assert orphans == 0, f"{child}.{column} -> {parent}"


def test_a_realistic_share_of_weddings_is_critical(stack, demo_data):
    with owner_connection(stack) as conn:
        critical, past, far = conn.execute("""
            SELECT count(*) FILTER (WHERE wedding_date BETWEEN current_date AND current_date + 30),
                   count(*) FILTER (WHERE wedding_date < current_date),
                   count(*) FILTER (WHERE wedding_date > current_date + 30)
            FROM wedsync.weddings""").fetchone()
    assert 5 <= critical <= 40  # about one in ten
    assert past > 50 and far > 50


def test_identity_sequences_continue_after_the_loaded_ids(stack, demo_data):
    with owner_connection(stack) as conn, conn.transaction(force_rollback=True):
        new_id = conn.execute("INSERT INTO wedsync.clients (partner_one_name, partner_two_name, email) "
                              "VALUES ('A', 'B', 'new@example.test') RETURNING client_id").fetchone()[0]
        assert new_id == 201


def test_updated_at_is_maintained_by_the_database(stack, demo_data):
    with owner_connection(stack) as conn, conn.transaction(force_rollback=True):
        before = conn.execute("SELECT updated_at FROM wedsync.weddings WHERE wedding_id = 1").fetchone()[0]
        after = conn.execute("UPDATE wedsync.weddings SET notes = 'x' WHERE wedding_id = 1 "
                             "RETURNING updated_at").fetchone()[0]
        assert after > before


def test_asset_files_match_their_metadata(stack, demo_data):
    asset_dir = Path(local_stack.environment(stack)["WEDSYNC_ASSET_SOURCE"])
    with owner_connection(stack) as conn:
        rows = conn.execute("SELECT file_path, size_bytes, sha256 FROM wedsync.photos "
                            "UNION ALL SELECT file_path, size_bytes, sha256 FROM wedsync.documents").fetchall()
    assert len(rows) == 24 == demo_data.asset_files
    for rel, size, sha in rows:
        data = (asset_dir / rel).read_bytes()
        assert len(data) == size and hashlib.sha256(data).hexdigest() == sha, rel
    photo = next(asset_dir.rglob("*.jpg")).read_bytes()
    assert photo.startswith(b"\xff\xd8\xff") and photo.endswith(b"\xff\xd9")
    assert next(asset_dir.rglob("*.pdf")).read_bytes().startswith(b"%PDF-")

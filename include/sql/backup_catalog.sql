-- backup_catalog: what wedsync-dr knows about its backups. It is a cache of the manifests in the
-- clouds (`wedsync-dr rebuild-catalog` recreates it from any one cloud) plus operational history
-- (validations, alerts, health checks, drills, restores). Idempotent: applied by `wedsync_dr.catalog.migrate`
-- (stack up, the compose init container, `wedsync-dr catalog migrate`, rebuild-catalog), never per connection.

CREATE SCHEMA IF NOT EXISTS backup_catalog;
SET search_path TO backup_catalog;

CREATE TABLE IF NOT EXISTS backups (
    backup_id        text PRIMARY KEY,                 -- <class>-<UTC yyyymmddThhmmssZ>-<random>
    data_class       text NOT NULL,
    status           text NOT NULL CHECK (status IN ('running', 'validated', 'degraded', 'failed', 'deleted',
                                                 'abandoned')),
    prefix           text NOT NULL,                    -- object key prefix shared by all clouds
    started_at       timestamptz NOT NULL,
    finished_at      timestamptz,
    snapshot_at      timestamptz,                      -- the instant the data was read at
    labels           text[] NOT NULL DEFAULT '{}',     -- e.g. {emergency}
    reason           text,
    requested_by     text,
    scope            jsonb,
    dag_id           text,
    run_id           text,
    object_count     integer,
    row_count        bigint,
    plaintext_bytes  bigint,
    compressed_bytes bigint,
    ciphertext_bytes bigint,
    clouds_ok        text[] NOT NULL DEFAULT '{}',
    clouds_failed    text[] NOT NULL DEFAULT '{}',
    retain_until     timestamptz,
    manifest         jsonb,
    error            text
);
CREATE INDEX IF NOT EXISTS backups_class_time ON backups (data_class, started_at DESC);

CREATE TABLE IF NOT EXISTS backup_objects (
    backup_id         text NOT NULL REFERENCES backups ON DELETE CASCADE,
    name              text NOT NULL,
    key               text NOT NULL,
    source            text,                           -- table name, or wedding:<id>
    wedding_id        bigint,
    rows              bigint,
    plaintext_sha256  char(64) NOT NULL,
    plaintext_size    bigint NOT NULL,
    ciphertext_sha256 char(64) NOT NULL,
    ciphertext_size   bigint NOT NULL,
    PRIMARY KEY (backup_id, name)
);
CREATE INDEX IF NOT EXISTS backup_objects_wedding ON backup_objects (wedding_id) WHERE wedding_id IS NOT NULL;

CREATE TABLE IF NOT EXISTS backup_copies (
    backup_id        text NOT NULL REFERENCES backups ON DELETE CASCADE,
    cloud            text NOT NULL,
    status           text NOT NULL CHECK (status IN ('validated', 'missing', 'corrupt', 'failed')),
    checked_at       timestamptz NOT NULL DEFAULT now(),
    detail           text,
    PRIMARY KEY (backup_id, cloud)
);

CREATE TABLE IF NOT EXISTS asset_blobs (
    sha256            char(64) PRIMARY KEY,           -- of the plaintext file
    size              bigint NOT NULL,
    ciphertext_sha256 char(64) NOT NULL,
    ciphertext_size   bigint NOT NULL,
    key               text NOT NULL,
    encryption        jsonb NOT NULL,                 -- kek_id + wrapped data key (never a raw key)
    first_backup_id   text NOT NULL,
    created_at        timestamptz NOT NULL DEFAULT now()
);

-- The newest asset index (path -> hash) lets a run skip re-hashing files whose size and mtime are unchanged.
CREATE TABLE IF NOT EXISTS asset_index (
    path             text PRIMARY KEY,
    sha256           char(64) NOT NULL,
    size             bigint NOT NULL,
    mtime_ns         bigint NOT NULL,
    backup_id        text NOT NULL
);

-- Content-addressed asset blobs (manifest format 3), by keyed content id (HMAC-SHA256 under the key ring's
-- dedup key): no plaintext hash. `entry` is the blob's manifest entry (wedsync_dr.format.BLOB_FIELDS), which
-- every later manifest that needs the blob repeats. Rebuilt from the manifests by rebuild-catalog.
-- One row per stored object (key): the same content id under two key prefixes (two policies, one catalog)
-- is two blobs.
CREATE TABLE IF NOT EXISTS blobs (
    key              text PRIMARY KEY,
    content_id       char(64) NOT NULL,
    entry            jsonb NOT NULL,
    first_backup_id  text NOT NULL,
    created_at       timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE IF NOT EXISTS alerts (
    alert_id         bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    raised_at        timestamptz NOT NULL DEFAULT now(),
    severity         text NOT NULL CHECK (severity IN ('info', 'warning', 'critical')),
    kind             text NOT NULL,
    subject          text,
    message          text NOT NULL,
    backup_id        text,
    details          jsonb
);
CREATE INDEX IF NOT EXISTS alerts_time ON alerts (raised_at DESC);

CREATE TABLE IF NOT EXISTS restores (
    restore_id       bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    restored_at      timestamptz NOT NULL DEFAULT now(),
    backup_id        text NOT NULL,
    data_class       text NOT NULL,
    target           text NOT NULL,
    wedding_id       bigint,
    dry_run          boolean NOT NULL,
    rows             bigint NOT NULL,
    seconds          double precision NOT NULL,
    sources          jsonb NOT NULL,                   -- cloud -> objects it served
    failovers        jsonb NOT NULL,                   -- [{key, cloud, reason}]
    run_id           text
);

-- Emergency runs: what was asked, by whom, for what scope, and how it ended.
CREATE TABLE IF NOT EXISTS emergency_runs (
    run_id           text PRIMARY KEY,
    requested_at     timestamptz NOT NULL DEFAULT now(),
    finished_at      timestamptz,
    reason           text NOT NULL,
    requested_by     text,
    scope            jsonb NOT NULL,
    classes          text[] NOT NULL,
    status           text NOT NULL CHECK (status IN ('running', 'succeeded', 'failed', 'coalesced')),
    coalesced_into   text,
    clouds           text[] NOT NULL DEFAULT '{}',
    backup_ids       text[] NOT NULL DEFAULT '{}'
);

-- Which emergency run currently covers which scope (see wedsync_dr.emergency for the coalescing rule).
CREATE TABLE IF NOT EXISTS emergency_claims (
    run_id           text PRIMARY KEY,
    scope_key        text NOT NULL,
    reason           text NOT NULL,
    claimed_at       timestamptz NOT NULL DEFAULT now(),
    coalesced        jsonb NOT NULL DEFAULT '[]'
);

CREATE TABLE IF NOT EXISTS cloud_health_checks (
    check_id         bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    checked_at       timestamptz NOT NULL DEFAULT now(),
    cloud            text NOT NULL,
    ok               boolean NOT NULL,
    latency_ms       double precision NOT NULL,
    error            text
);
CREATE INDEX IF NOT EXISTS cloud_health_checks_cloud ON cloud_health_checks (cloud, check_id DESC);

CREATE TABLE IF NOT EXISTS cloud_health (
    cloud             text PRIMARY KEY,
    healthy           boolean NOT NULL,
    failures_in_a_row integer NOT NULL,
    last_latency_ms   double precision,
    last_error        text,
    changed_at        timestamptz NOT NULL,
    checked_at        timestamptz NOT NULL
);

-- Restore drills: a backup restored into scratch space and verified, on a schedule.
CREATE TABLE IF NOT EXISTS drills (
    drill_id         bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    drilled_at       timestamptz NOT NULL DEFAULT now(),
    data_class       text NOT NULL,
    backup_id        text,
    cloud            text,
    ok               boolean NOT NULL,
    seconds          double precision,
    rows             bigint,
    detail           text
);
CREATE INDEX IF NOT EXISTS drills_class_time ON drills (data_class, drilled_at DESC);

-- Acknowledged alerts are no longer open (wedsync_dr.status): a person has seen the problem and owns it.
-- Acknowledging one closes the earlier ones of the same kind and subject; a later alert opens it again.
ALTER TABLE alerts ADD COLUMN IF NOT EXISTS acknowledged_at timestamptz,
                   ADD COLUMN IF NOT EXISTS acknowledged_by text;
CREATE INDEX IF NOT EXISTS alerts_kind_subject ON alerts (kind, subject, alert_id DESC);

-- Verifications (backup_verify DAG): one backup's copy in one cloud downloaded, checksummed and decrypted.
CREATE TABLE IF NOT EXISTS verifications (
    verification_id  bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    verified_at      timestamptz NOT NULL DEFAULT now(),
    backup_id        text NOT NULL,
    data_class       text NOT NULL,
    cloud            text NOT NULL,
    ok               boolean NOT NULL,
    sample           double precision NOT NULL,    -- fraction of the objects read (1: all)
    seed             bigint NOT NULL,              -- which sample: the same seed reads the same objects
    objects_read     integer NOT NULL,
    objects_total    integer NOT NULL,
    problem_count    integer NOT NULL,
    problems         jsonb NOT NULL DEFAULT '[]',  -- the first 100
    seconds          double precision NOT NULL,
    dag_id           text,
    run_id           text
);
CREATE INDEX IF NOT EXISTS verifications_backup ON verifications (backup_id, cloud, verified_at DESC);
CREATE INDEX IF NOT EXISTS verifications_class_time ON verifications (data_class, verified_at DESC);

-- `abandoned` (version 3): a backup whose run died (killed) before committing; the sweep removed what it left
-- (wedsync_dr.abandoned). Catalogs created before it get the wider CHECK here.
ALTER TABLE backups DROP CONSTRAINT IF EXISTS backups_status_check,
    ADD CONSTRAINT backups_status_check
        CHECK (status IN ('running', 'validated', 'degraded', 'failed', 'deleted', 'abandoned'));

-- Backup steps (version 4): one row per finished extract, encrypt, upload (per cloud) and validate of a backup
-- run, recorded by its Airflow tasks (wedsync_dr.wiring) for the metrics endpoint (wedsync_dr.metrics), which
-- sums them at scrape time into counters. Operational history, not in the manifests: rebuild-catalog does not
-- recreate it.
CREATE TABLE IF NOT EXISTS backup_steps (
    step_id          bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    finished_at      timestamptz NOT NULL DEFAULT now(),
    backup_id        text NOT NULL,
    data_class       text NOT NULL,
    step             text NOT NULL CHECK (step IN ('extract', 'encrypt', 'upload', 'validate')),
    cloud            text,                         -- upload: the cloud written to
    seconds          double precision NOT NULL,
    bytes            bigint,                       -- extract: compressed, encrypt: ciphertext, upload: sent
    objects          integer,                      -- upload: objects sent (blobs a cloud already held are not)
    outcome          text CHECK (outcome IN ('validated', 'degraded', 'failed'))  -- validate: how the backup ended
);
CREATE INDEX IF NOT EXISTS backup_steps_class_step ON backup_steps (data_class, step, cloud, step_id DESC);

-- Version 5 (manifest format 4): a chunked table object is stored as its chunks (blobs), not as an object of
-- its own: it has no key and no ciphertext of its own, and counts its chunks.
ALTER TABLE backup_objects ALTER COLUMN key DROP NOT NULL,
    ALTER COLUMN ciphertext_sha256 DROP NOT NULL,
    ALTER COLUMN ciphertext_size DROP NOT NULL,
    ADD COLUMN IF NOT EXISTS chunks integer;

-- Version 6: the date each shared blob (asset blob, chunk) was last seen or made write-once until in each cloud,
-- for the clouds whose listings do not carry locks (S3's ListObjectsV2): a listing proves such a blob's bytes,
-- and a HEAD is asked only when the lock recorded here is shorter than a backup needs. A cache of what the
-- clouds answered, not in the manifests: a lost row costs a HEAD, and rebuild-catalog does not recreate it.
CREATE TABLE IF NOT EXISTS blob_locks (
    cloud            text NOT NULL,
    key              text NOT NULL,
    locked_until     timestamptz NOT NULL,
    -- when it was seen or set: a copy the cloud says was written later (a fill, repair, any re-write) is
    -- not the copy this date is about, and is asked by HEAD again
    recorded_at      timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (cloud, key)
);
ALTER TABLE blob_locks ADD COLUMN IF NOT EXISTS recorded_at timestamptz NOT NULL DEFAULT now();

-- The chunks in each pack (manifest format 5), recorded by the extract as it closes the pack: what a
-- deduplicated extract looks up to reference a chunk instead of storing it again. In no manifest (it would grow
-- with the data: 50,000 chunks per GB), and a restore never needs it. A cache of what was stored, like
-- blob_locks: rebuild-catalog does not recreate it, and the next backup after a lost catalog stores its chunks
-- once more.
CREATE TABLE IF NOT EXISTS pack_chunks (
    key              text NOT NULL,                  -- the pack (blobs.key)
    content_id       char(64) NOT NULL,              -- the chunk's keyed content id
    pack_offset      bigint NOT NULL,                -- where it starts in the pack's plaintext
    size             integer NOT NULL,
    PRIMARY KEY (key, content_id)
);

-- The schema's version: catalog.connect() refuses a catalog older than the release needs (not migrated since an
-- upgrade) instead of failing later on a missing table or column. Raise it with every change above.
CREATE TABLE IF NOT EXISTS schema_version (
    singleton        boolean PRIMARY KEY DEFAULT true CHECK (singleton),
    version          integer NOT NULL
);
INSERT INTO schema_version (singleton, version) VALUES (true, 7)
    ON CONFLICT (singleton) DO UPDATE SET version = GREATEST(schema_version.version, EXCLUDED.version);

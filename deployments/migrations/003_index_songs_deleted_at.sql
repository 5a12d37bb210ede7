-- opsflow: no-transaction
-- Built without blocking writes; CONCURRENTLY cannot run inside a transaction.
CREATE INDEX CONCURRENTLY IF NOT EXISTS songs_deleted_at_idx
    ON app.songs (deleted_at) WHERE deleted_at IS NOT NULL;

-- Songs, soft-deleted as in seed 004: rows get deleted_at and are purged later (db purge).
CREATE TABLE app.songs (
    id          bigserial PRIMARY KEY,
    user_id     bigint      NOT NULL REFERENCES app.users (id),
    title       text        NOT NULL,
    created_at  timestamptz NOT NULL DEFAULT now(),
    deleted_at  timestamptz
);
CREATE INDEX songs_user_id_idx ON app.songs (user_id);

CREATE VIEW app.active_songs AS
    SELECT * FROM app.songs WHERE deleted_at IS NULL;

-- Eviction and pinning: what storage holds of each NAR, pinned store paths,
-- and counters kept across restarts (hits and misses, for `ncps-cli stats`).
--
-- nars.stored_size: NULL = not in storage (only its narinfo was asked for);
-- >= 0 = in storage, that many bytes; -1 = not known yet. NARs recorded
-- before this migration are -1: the server looks each one up in storage
-- once, in the background.

ALTER TABLE nars ADD COLUMN stored_size INTEGER;

UPDATE nars SET stored_size = -1;

CREATE TABLE pins (
    hash TEXT PRIMARY KEY,
    created_at INTEGER NOT NULL
);

CREATE TABLE counters (
    name TEXT PRIMARY KEY,
    value INTEGER NOT NULL
);

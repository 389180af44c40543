-- Eviction and pinning: what storage holds of each NAR, pinned store paths,
-- and counters kept across restarts (hits and misses, for `ncps-cli stats`).
--
-- nars.stored_size: NULL = not in storage (only its narinfo was asked for);
-- >= 0 = in storage, that many bytes; -1 = not known yet. NARs recorded
-- before this migration are -1: the server looks each one up in storage
-- once, in the background.
-- Statements are separated by a `;` at the end of a line.

ALTER TABLE nars ADD COLUMN stored_size BIGINT NULL;

UPDATE nars SET stored_size = -1;

CREATE TABLE pins (
    hash VARCHAR(255) NOT NULL PRIMARY KEY,
    created_at BIGINT NOT NULL
) ENGINE = InnoDB DEFAULT CHARSET = utf8mb4 COLLATE = utf8mb4_bin;

CREATE TABLE counters (
    name VARCHAR(255) NOT NULL PRIMARY KEY,
    `value` BIGINT NOT NULL
) ENGINE = InnoDB DEFAULT CHARSET = utf8mb4 COLLATE = utf8mb4_bin;

-- The initial schema: narinfo and NAR records, and cache configuration.
-- Keys compare byte for byte (utf8mb4_bin), as in SQLite and PostgreSQL.
-- Statements are separated by a `;` at the end of a line.

CREATE TABLE narinfos (
    hash VARCHAR(255) NOT NULL PRIMARY KEY,
    narinfo MEDIUMTEXT NOT NULL,
    nar_file VARCHAR(255) NOT NULL,
    created_at BIGINT NOT NULL,
    last_accessed_at BIGINT NOT NULL,
    INDEX narinfos_nar_file (nar_file),
    INDEX narinfos_last_accessed_at (last_accessed_at)
) ENGINE = InnoDB DEFAULT CHARSET = utf8mb4 COLLATE = utf8mb4_bin;

CREATE TABLE nars (
    file VARCHAR(255) NOT NULL PRIMARY KEY,
    compression VARCHAR(255) NOT NULL,
    file_hash VARCHAR(255),
    file_size BIGINT,
    nar_hash VARCHAR(255) NOT NULL,
    nar_size BIGINT NOT NULL,
    upstream_url TEXT,
    last_accessed_at BIGINT NOT NULL,
    INDEX nars_last_accessed_at (last_accessed_at)
) ENGINE = InnoDB DEFAULT CHARSET = utf8mb4 COLLATE = utf8mb4_bin;

CREATE TABLE config (
    `key` VARCHAR(255) NOT NULL PRIMARY KEY,
    `value` TEXT NOT NULL
) ENGINE = InnoDB DEFAULT CHARSET = utf8mb4 COLLATE = utf8mb4_bin;

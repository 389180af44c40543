-- The initial schema: narinfo and NAR records, and cache configuration.

CREATE TABLE narinfos (
    hash TEXT PRIMARY KEY,
    narinfo TEXT NOT NULL,
    nar_file TEXT NOT NULL,
    created_at BIGINT NOT NULL,
    last_accessed_at BIGINT NOT NULL
);

CREATE INDEX narinfos_nar_file ON narinfos (nar_file);
CREATE INDEX narinfos_last_accessed_at ON narinfos (last_accessed_at);

CREATE TABLE nars (
    file TEXT PRIMARY KEY,
    compression TEXT NOT NULL,
    file_hash TEXT,
    file_size BIGINT,
    nar_hash TEXT NOT NULL,
    nar_size BIGINT NOT NULL,
    upstream_url TEXT,
    last_accessed_at BIGINT NOT NULL
);

CREATE INDEX nars_last_accessed_at ON nars (last_accessed_at);

CREATE TABLE config (
    key TEXT PRIMARY KEY,
    value TEXT NOT NULL
);

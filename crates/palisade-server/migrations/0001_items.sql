-- Items: the example resource. Portable SQL: the same file runs on SQLite and PostgreSQL.
-- Ids are UUIDv7 text (time-ordered, so the primary key doubles as the pagination cursor);
-- times are Unix milliseconds; `version` grows with every update and makes the ETag.
CREATE TABLE items (
    id TEXT PRIMARY KEY,
    sku TEXT NOT NULL UNIQUE,
    name TEXT NOT NULL,
    description TEXT NOT NULL DEFAULT '',
    price_cents BIGINT NOT NULL CHECK (price_cents >= 0),
    stock BIGINT NOT NULL DEFAULT 0 CHECK (stock >= 0),
    version BIGINT NOT NULL DEFAULT 1,
    created_at BIGINT NOT NULL,
    updated_at BIGINT NOT NULL
);

-- Orders: created only with an Idempotency-Key (the seeds' payment example); each takes
-- stock from its item in the same transaction. `subject` is who ordered; `request_id` ties
-- the row to the request's logs.
CREATE TABLE orders (
    id TEXT PRIMARY KEY,
    item_id TEXT NOT NULL REFERENCES items (id),
    quantity BIGINT NOT NULL CHECK (quantity > 0),
    total_cents BIGINT NOT NULL,
    status TEXT NOT NULL,
    subject TEXT NOT NULL,
    request_id TEXT NOT NULL,
    idempotency_key TEXT NOT NULL,
    created_at BIGINT NOT NULL,
    updated_at BIGINT NOT NULL
);

CREATE INDEX orders_by_item ON orders (item_id);
CREATE INDEX orders_by_subject ON orders (subject, id);
-- The database's own guarantee behind the idempotency layer: one order per client and key,
-- even if the layer's entry has expired or the layer is off.
CREATE UNIQUE INDEX orders_by_idempotency_key ON orders (subject, idempotency_key);

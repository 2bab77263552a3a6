-- Webhook endpoints (their secret included: it signs each delivery).
CREATE TABLE webhooks (
    id TEXT PRIMARY KEY,
    record TEXT NOT NULL
) WITHOUT ROWID;

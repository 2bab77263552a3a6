-- Webhook events, each written in the transaction of the book step that
-- made it, in commit order; forgotten once every endpoint is past them.
-- AUTOINCREMENT: a position is never given twice, even after a trim.
CREATE TABLE webhook_feed (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    event TEXT NOT NULL
);
-- Each endpoint's place in the feed and its retry, as JSON.
CREATE TABLE webhook_cursors (
    endpoint TEXT PRIMARY KEY,
    cursor TEXT NOT NULL
) WITHOUT ROWID;
-- Each endpoint's deliveries as last attempted, the newest few hundred.
CREATE TABLE webhook_deliveries (
    endpoint TEXT NOT NULL,
    seq INTEGER NOT NULL,
    event_id TEXT NOT NULL,
    record TEXT NOT NULL,
    PRIMARY KEY (endpoint, seq)
) WITHOUT ROWID;
CREATE INDEX webhook_deliveries_by_event ON webhook_deliveries (endpoint, event_id);

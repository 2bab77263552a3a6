-- The dead letter of queue entries that are not events (a damaged row, a
-- hand-written one): kept for an admin to read (`GET /v1/events/unreadable`),
-- at most the newest 10,000.
CREATE TABLE unreadable_events (
    seq INTEGER PRIMARY KEY,
    delivery TEXT NOT NULL,
    raw TEXT NOT NULL,
    reason TEXT NOT NULL,
    at_ms INTEGER NOT NULL
);

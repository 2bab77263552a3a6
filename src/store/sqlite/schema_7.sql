-- Payouts: requested, then paid or failed. The record (JSON) is written by
-- the same transaction as the book step that changes it; the status and
-- partner columns list it. Ids sort by request time.
CREATE TABLE payouts (
    id TEXT PRIMARY KEY,
    partner TEXT NOT NULL,
    status TEXT NOT NULL,
    record TEXT NOT NULL
) WITHOUT ROWID;
CREATE INDEX payouts_by_status ON payouts (status, id);
CREATE INDEX payouts_by_partner ON payouts (partner, id);

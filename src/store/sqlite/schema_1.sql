-- lastclick embedded store, schema 1. Applied in one transaction at the
-- first start; later schemas are new files, never edits of this one.

-- Values kept across restarts: the catalog version, and secrets and tokens
-- generated at the first start.
CREATE TABLE settings (
    name TEXT PRIMARY KEY,
    value TEXT NOT NULL
) WITHOUT ROWID;
INSERT INTO settings (name, value) VALUES ('catalog_version', '0');

-- The catalog: records as the API shows them (JSON), the token hash apart.
CREATE TABLE partners (
    id TEXT PRIMARY KEY,
    token_hash TEXT NOT NULL,
    record TEXT NOT NULL
) WITHOUT ROWID;
CREATE INDEX partners_token ON partners (token_hash);
CREATE TABLE campaigns (
    partner TEXT NOT NULL,
    slug TEXT NOT NULL,
    record TEXT NOT NULL,
    PRIMARY KEY (partner, slug)
) WITHOUT ROWID;

-- Clicks, keyed by their 16-byte ids, whose first six bytes are the click
-- time: new rows append at the end of the tree. No index on `at`: it would
-- cost every click a second insert, and expiry walks the keys instead.
CREATE TABLE clicks (
    id BLOB PRIMARY KEY,
    visitor BLOB NOT NULL,
    partner TEXT NOT NULL,
    campaign TEXT NOT NULL,
    term TEXT NOT NULL,
    at INTEGER NOT NULL
) WITHOUT ROWID;
-- Each visitor's last click (by click time).
CREATE TABLE last_clicks (
    visitor BLOB PRIMARY KEY,
    click BLOB NOT NULL,
    at INTEGER NOT NULL
) WITHOUT ROWID;
-- Report counters per (partner, UTC day, campaign, term): clicks (added to
-- by every click batch), and apart, the distinct visitors (src/store/
-- sketch.rs: exact hashes while few, then a 16 KiB HyperLogLog; merged every
-- 30 s, too much to rewrite with every batch).
CREATE TABLE click_cells (
    partner TEXT NOT NULL,
    day TEXT NOT NULL,
    campaign TEXT NOT NULL,
    term TEXT NOT NULL,
    clicks INTEGER NOT NULL,
    PRIMARY KEY (partner, day, campaign, term)
) WITHOUT ROWID;
CREATE INDEX click_cells_day ON click_cells (day);
CREATE TABLE cell_visitors (
    partner TEXT NOT NULL,
    day TEXT NOT NULL,
    campaign TEXT NOT NULL,
    term TEXT NOT NULL,
    visitors BLOB NOT NULL,
    PRIMARY KEY (partner, day, campaign, term)
) WITHOUT ROWID;
CREATE INDEX cell_visitors_day ON cell_visitors (day);

-- Conversion events: every id ever accepted (idempotency keys, forever),
-- and the queue the worker takes them from (taken_at set while a worker
-- holds one; the row goes when it is acknowledged).
CREATE TABLE event_ids (id TEXT PRIMARY KEY) WITHOUT ROWID;
CREATE TABLE event_queue (
    seq INTEGER PRIMARY KEY,
    event TEXT NOT NULL,
    queued_at INTEGER NOT NULL,
    taken_at INTEGER
);
CREATE INDEX event_queue_taken ON event_queue (taken_at, seq);

-- Routing: who claimed each customer (referral NULL: signed up without a
-- valid click), events waiting for their customer's signup, and those that
-- waited longer than worker.park_for.
CREATE TABLE claims (
    customer TEXT PRIMARY KEY,
    referral TEXT
) WITHOUT ROWID;
CREATE TABLE parked (
    customer TEXT NOT NULL,
    event_id TEXT NOT NULL,
    event TEXT NOT NULL,
    parked_at INTEGER NOT NULL,
    PRIMARY KEY (customer, event_id)
) WITHOUT ROWID;
CREATE INDEX parked_at ON parked (parked_at);
CREATE TABLE dead (
    seq INTEGER PRIMARY KEY,
    event_id TEXT NOT NULL,
    event TEXT NOT NULL,
    parked_at INTEGER NOT NULL
);

-- Each partner's book: routed events waiting for the book step, the book
-- (totals, tier inputs) and its version, customer records, conversion
-- report cells, the tier history by event time, and the append-only ledger.
CREATE TABLE inbox (
    seq INTEGER PRIMARY KEY,
    partner TEXT NOT NULL,
    item TEXT NOT NULL
);
CREATE INDEX inbox_partner ON inbox (partner, seq);
CREATE TABLE book_locks (
    partner TEXT PRIMARY KEY,
    holder TEXT NOT NULL,
    until_ms INTEGER NOT NULL
) WITHOUT ROWID;
CREATE TABLE books (
    partner TEXT PRIMARY KEY,
    version INTEGER NOT NULL,
    book TEXT NOT NULL
) WITHOUT ROWID;
CREATE TABLE customers (
    partner TEXT NOT NULL,
    id TEXT NOT NULL,
    record TEXT NOT NULL,
    PRIMARY KEY (partner, id)
) WITHOUT ROWID;
CREATE TABLE conversions (
    partner TEXT NOT NULL,
    cell TEXT NOT NULL,
    counts TEXT NOT NULL,
    PRIMARY KEY (partner, cell)
) WITHOUT ROWID;
CREATE TABLE history (
    partner TEXT NOT NULL,
    member TEXT NOT NULL,
    at INTEGER NOT NULL,
    PRIMARY KEY (partner, member)
) WITHOUT ROWID;
CREATE INDEX history_at ON history (partner, at);
CREATE TABLE ledger (
    partner TEXT NOT NULL,
    seq INTEGER NOT NULL,
    entry TEXT NOT NULL,
    PRIMARY KEY (partner, seq)
) WITHOUT ROWID;

-- Click records packed by batch (src/store/sqlite/click_log.rs): a body
-- per flushed batch, its records end to end, and a key row per body, by
-- the batch's last click id. A row per click cost each click a B-tree
-- insert and six bound values. The rows of `clicks` move into bodies in
-- this migration's second step (`click_log::migrate_rows`), which then
-- drops that table.
CREATE TABLE click_bodies (
    id INTEGER PRIMARY KEY,
    clicks BLOB NOT NULL
);
CREATE TABLE click_batches (
    last BLOB PRIMARY KEY,
    first BLOB NOT NULL,
    -- The newest click time in the body: the body expires after it.
    at INTEGER NOT NULL,
    body INTEGER NOT NULL
) WITHOUT ROWID;

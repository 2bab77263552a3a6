-- Customer records and books as rowid tables, updated in place. A customer
-- record (about 2 KB of JSON with ten payments) is longer than a key-ordered
-- (WITHOUT ROWID) table keeps in its page (about 1 KB with 4 KiB pages), so
-- every rewrite freed and took overflow pages; a rowid table keeps up to
-- about 4 KB in the page, and an upsert that keeps the key rewrites the row
-- where it is.
CREATE TABLE customers_v2 (
    partner TEXT NOT NULL,
    id TEXT NOT NULL,
    record TEXT NOT NULL,
    UNIQUE (partner, id)
);
INSERT INTO customers_v2 (partner, id, record) SELECT partner, id, record FROM customers;
DROP TABLE customers;
ALTER TABLE customers_v2 RENAME TO customers;
CREATE TABLE books_v2 (
    partner TEXT NOT NULL UNIQUE,
    version INTEGER NOT NULL,
    book TEXT NOT NULL
);
INSERT INTO books_v2 (partner, version, book) SELECT partner, version, book FROM books;
DROP TABLE books;
ALTER TABLE books_v2 RENAME TO books;
-- The tier history keyed by time first: in-order events append their
-- members at the end of the tree, where keyed by member they landed on a
-- page of their own each.
CREATE TABLE history_v2 (
    partner TEXT NOT NULL,
    at INTEGER NOT NULL,
    member TEXT NOT NULL,
    PRIMARY KEY (partner, at, member)
) WITHOUT ROWID;
INSERT INTO history_v2 (partner, at, member) SELECT partner, at, member FROM history;
DROP TABLE history;
ALTER TABLE history_v2 RENAME TO history;
-- Book locks are held in memory: the database has one worker.
DROP TABLE book_locks;
-- Each click batch's counts by report cell, added to click_cells about once
-- a second (src/store/sqlite/counts.rs); `counts_merged_upto` is the last
-- row added. AUTOINCREMENT: numbers never come back once rows are deleted.
CREATE TABLE pending_counts (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    counts BLOB NOT NULL
);
INSERT INTO settings (name, value) VALUES ('counts_merged_upto', '0');

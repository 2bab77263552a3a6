-- Batch counts numbered by the store, not by AUTOINCREMENT: AUTOINCREMENT
-- rewrites its `sqlite_sequence` row with every insert, one more page in
-- the WAL for every click batch. A batch takes the number after both the
-- last row and the last merged (`counts_merged_upto`), so numbers still
-- never come back once rows are deleted.
CREATE TABLE pending_counts_v3 (
    seq INTEGER PRIMARY KEY,
    counts BLOB NOT NULL
);
INSERT INTO pending_counts_v3 (seq, counts) SELECT seq, counts FROM pending_counts;
DROP TABLE pending_counts;
ALTER TABLE pending_counts_v3 RENAME TO pending_counts;

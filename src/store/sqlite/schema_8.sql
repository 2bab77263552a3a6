-- Requests that were not clicks (bots, link previews, suspects), tallied
-- by report cell; and the batches of tallies already added, so that a
-- batch sent again adds nothing.
CREATE TABLE traffic_cells (
    partner TEXT NOT NULL,
    day TEXT NOT NULL,
    campaign TEXT NOT NULL,
    term TEXT NOT NULL,
    bots INTEGER NOT NULL DEFAULT 0,
    suspects INTEGER NOT NULL DEFAULT 0,
    PRIMARY KEY (partner, day, campaign, term)
) WITHOUT ROWID;
CREATE TABLE traffic_batches (
    id BLOB PRIMARY KEY,
    at INTEGER NOT NULL
) WITHOUT ROWID;

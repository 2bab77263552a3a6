-- Customers whose commissions were held (`attribution.min_click_age`),
-- across partners, for `GET /v1/holds`: written with the customer's
-- record, which keeps the hold itself.
CREATE TABLE holds (
    customer TEXT PRIMARY KEY,
    partner TEXT NOT NULL,
    held_at INTEGER NOT NULL
) WITHOUT ROWID;
CREATE INDEX holds_by_time ON holds (held_at, customer);

-- Each visitor's clicks, for the attribution explanation
-- (`GET /v1/customers/{id}/attribution`): read newest first, at most 20;
-- expired with the window like the click records.
CREATE TABLE visitor_clicks (
    visitor BLOB NOT NULL,
    at INTEGER NOT NULL,
    click BLOB NOT NULL,
    PRIMARY KEY (visitor, at, click)
) WITHOUT ROWID;

-- Each visitor's clicks, newest first by (time, id: ids start with their
-- millisecond): the first is the visitor's last click, and the latest 20
-- explain an attribution (`GET /v1/customers/{id}/attribution`). Expired
-- with the window like the click records. It takes the place of
-- `last_clicks`, whose rows it starts with.
CREATE TABLE visitor_clicks (
    visitor BLOB NOT NULL,
    at INTEGER NOT NULL,
    click BLOB NOT NULL,
    PRIMARY KEY (visitor, at, click)
) WITHOUT ROWID;
INSERT INTO visitor_clicks (visitor, at, click) SELECT visitor, at, click FROM last_clicks;
DROP TABLE last_clicks;

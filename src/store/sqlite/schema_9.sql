-- Overwrites, tallied with the bots and suspects: counted clicks that took
-- a visitor another partner's cookie credited (won), and the other side
-- (lost).
ALTER TABLE traffic_cells ADD COLUMN overwrites_won INTEGER NOT NULL DEFAULT 0;
ALTER TABLE traffic_cells ADD COLUMN overwrites_lost INTEGER NOT NULL DEFAULT 0;

-- The catalog version at which each partner and campaign last changed, so
-- that a route cache asks for what changed since the version it has instead
-- of reloading the whole catalog. Rows from before this step say 0: a cache
-- loads everything once when it starts, so it has them already.
ALTER TABLE partners ADD COLUMN changed_at INTEGER NOT NULL DEFAULT 0;
ALTER TABLE campaigns ADD COLUMN changed_at INTEGER NOT NULL DEFAULT 0;
CREATE INDEX partners_changed_at ON partners (changed_at);
CREATE INDEX campaigns_changed_at ON campaigns (changed_at);

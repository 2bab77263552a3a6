-- Coupon codes (upper case), each credited to one partner: a signup that
-- names one is attributed to its partner without a click.
CREATE TABLE coupons (
    code TEXT PRIMARY KEY,
    partner TEXT NOT NULL,
    record TEXT NOT NULL
) WITHOUT ROWID;
CREATE INDEX coupons_by_partner ON coupons (partner, code);

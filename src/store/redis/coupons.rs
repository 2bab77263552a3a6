//! Coupon codes in Redis, on their own `{coupons}` slot: a hash of code →
//! coupon, and each partner's set of codes, written together by a script.

use super::*;
use crate::ids::CouponCode;
use crate::store::{Coupon, CouponStore};

#[async_trait]
impl CouponStore for RedisStore {
    async fn insert_coupon(&self, coupon: &Coupon) -> Result<(), StoreError> {
        let registered: i64 = self
            .insert_coupon
            .key(keys::COUPONS)
            .key(keys::owned(|k| {
                keys::partner_coupons(k, coupon.partner.as_str())
            }))
            .arg(coupon.code.as_str())
            .arg(encode(coupon))
            .invoke_async(&mut self.conn())
            .await
            .map_err(unavailable)?;
        if registered == 0 {
            return Err(StoreError::Conflict);
        }
        Ok(())
    }

    async fn coupons(&self, partner: &PartnerId) -> Result<Vec<Coupon>, StoreError> {
        let mut codes: Vec<String> = redis::cmd("SMEMBERS")
            .arg(keys::owned(|k| keys::partner_coupons(k, partner.as_str())))
            .query_async(&mut self.conn())
            .await
            .map_err(unavailable)?;
        if codes.is_empty() {
            return Ok(Vec::new());
        }
        codes.sort();
        let records: Vec<Option<String>> = redis::cmd("HMGET")
            .arg(keys::COUPONS)
            .arg(&codes)
            .query_async(&mut self.conn())
            .await
            .map_err(unavailable)?;
        records.iter().flatten().map(|r| decode(r)).collect()
    }

    async fn coupon(&self, code: &CouponCode) -> Result<Option<Coupon>, StoreError> {
        let record: Option<String> = redis::cmd("HGET")
            .arg(keys::COUPONS)
            .arg(code.as_str())
            .query_async(&mut self.conn())
            .await
            .map_err(unavailable)?;
        record.map(|r| decode(&r)).transpose()
    }
}

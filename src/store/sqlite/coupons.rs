//! Coupon codes in SQLite: one row each, the code its key.

use super::*;
use crate::ids::CouponCode;
use crate::store::{Coupon, CouponStore};

#[async_trait]
impl CouponStore for SqliteStore {
    async fn insert_coupon(&self, coupon: &Coupon) -> Result<(), StoreError> {
        let row = (
            coupon.code.as_str().to_owned(),
            coupon.partner.as_str().to_owned(),
            to_json(coupon),
        );
        self.write(move |conn| {
            let inserted = conn.execute(
                "INSERT OR IGNORE INTO coupons (code, partner, record) VALUES (?1, ?2, ?3)",
                params![row.0, row.1, row.2],
            )?;
            if inserted == 0 {
                return Err(StoreError::Conflict);
            }
            Ok(())
        })
        .await
    }

    async fn coupons(&self, partner: &PartnerId) -> Result<Vec<Coupon>, StoreError> {
        let partner = partner.as_str().to_owned();
        self.read(move |conn| {
            json_rows(
                conn,
                "SELECT record FROM coupons WHERE partner = ?1 ORDER BY code",
                [partner],
            )
        })
        .await
    }

    async fn coupon(&self, code: &CouponCode) -> Result<Option<Coupon>, StoreError> {
        let code = code.as_str().to_owned();
        let found: Vec<Coupon> = self
            .read(move |conn| json_rows(conn, "SELECT record FROM coupons WHERE code = ?1", [code]))
            .await?;
        Ok(found.into_iter().next())
    }
}

//! Held customers in SQLite: rows of the `holds` table, written with the
//! customer's record by the book step (`books.rs`), listed here.

use super::*;
use crate::store::{HeldCustomer, HoldStore};

#[async_trait]
impl HoldStore for SqliteStore {
    async fn hold_partner(&self, customer: &CustomerId) -> Result<Option<PartnerId>, StoreError> {
        let customer = customer.as_str().to_owned();
        let partner: Option<String> = self
            .read(move |conn| {
                Ok(conn
                    .prepare_cached("SELECT partner FROM holds WHERE customer = ?1")?
                    .query_row([&customer], |row| row.get(0))
                    .optional()?)
            })
            .await?;
        partner.map(|p| partner_of_key(&p)).transpose()
    }

    async fn holds(
        &self,
        after: Option<&str>,
        limit: usize,
    ) -> Result<Vec<HeldCustomer>, StoreError> {
        let after = after.unwrap_or("").to_owned();
        let rows: Vec<(String, String, i64)> = self
            .read(move |conn| {
                // The cursor compares as text with the same 15-digit form.
                let mut query = conn.prepare_cached(
                    "SELECT customer, partner, held_at FROM holds \
                     WHERE printf('%015d.', held_at) || customer > ?1 \
                     ORDER BY held_at, customer LIMIT ?2",
                )?;
                let rows = query.query_map(params![after, limit as i64], |row| {
                    Ok((row.get(0)?, row.get(1)?, row.get(2)?))
                })?;
                Ok(rows.collect::<Result<_, _>>()?)
            })
            .await?;
        rows.into_iter()
            .map(|(customer, partner, held_at)| {
                Ok(HeldCustomer {
                    customer,
                    partner: partner_of_key(&partner)?,
                    held_at,
                })
            })
            .collect()
    }
}

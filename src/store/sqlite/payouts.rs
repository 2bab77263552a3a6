//! Payouts in SQLite: rows of the `payouts` table, written by the book
//! step that changes them (`books.rs`), listed here by status and partner.

use super::*;
use crate::conversions::book::{Payout, PayoutStatus};
use crate::ids::PayoutId;

#[async_trait]
impl PayoutStore for SqliteStore {
    async fn index_payout(&self, _payout: &Payout) -> Result<(), StoreError> {
        // The row written with the book is its own index.
        Ok(())
    }

    async fn unindex_payout(&self, _id: &PayoutId, _old: PayoutStatus) -> Result<(), StoreError> {
        Ok(())
    }

    async fn payout_partner(&self, id: &PayoutId) -> Result<Option<PartnerId>, StoreError> {
        let id = id.as_str().to_owned();
        let partner: Option<String> = self
            .read(move |conn| {
                Ok(conn
                    .prepare_cached("SELECT partner FROM payouts WHERE id = ?1")?
                    .query_row([&id], |row| row.get(0))
                    .optional()?)
            })
            .await?;
        partner.map(|p| partner_of_key(&p)).transpose()
    }

    async fn payouts(
        &self,
        status: Option<PayoutStatus>,
        after: Option<&PayoutId>,
        limit: usize,
    ) -> Result<Vec<Payout>, StoreError> {
        let status = status.map(|s| s.as_str());
        let after = after.map_or(String::new(), |id| id.as_str().to_owned());
        self.read(move |conn| {
            json_rows(
                conn,
                "SELECT record FROM payouts WHERE (?1 IS NULL OR status = ?1) AND id > ?2 \
                 ORDER BY id LIMIT ?3",
                params![status, after, limit as i64],
            )
        })
        .await
    }

    async fn partner_payouts(
        &self,
        partner: &PartnerId,
        before: Option<&PayoutId>,
        limit: usize,
    ) -> Result<Vec<Payout>, StoreError> {
        let partner = partner.as_str().to_owned();
        // Ids are `po_` and hex digits: `po_g` sorts after every one.
        let before = before.map_or("po_g".to_owned(), |id| id.as_str().to_owned());
        self.read(move |conn| {
            json_rows(
                conn,
                "SELECT record FROM payouts WHERE partner = ?1 AND id < ?2 \
                 ORDER BY id DESC LIMIT ?3",
                params![partner, before, limit as i64],
            )
        })
        .await
    }
}

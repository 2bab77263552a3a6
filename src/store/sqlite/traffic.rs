//! Bot and suspect tallies in SQLite: one row per report cell, added to
//! in one transaction per batch, which also notes the batch's id so that
//! a batch sent again adds nothing.

use super::*;
use crate::store::{TrafficBatch, TrafficCount};

impl SqliteStore {
    pub(super) async fn write_traffic(&self, batch: &TrafficBatch) -> Result<(), StoreError> {
        let batch = batch.clone();
        let now = Utc::now().timestamp();
        // Like a click batch: at risk until the next synced commit, which is
        // the documented cost of a power loss.
        self.write_unsynced(move |conn| {
            let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
            let fresh = tx
                .prepare_cached("INSERT OR IGNORE INTO traffic_batches (id, at) VALUES (?1, ?2)")?
                .execute(params![&batch.id[..], now])?;
            if fresh == 1 {
                let mut add = tx.prepare_cached(
                    "INSERT INTO traffic_cells (partner, day, campaign, term, bots, suspects) \
                     VALUES (?1, ?2, ?3, ?4, ?5, ?6) \
                     ON CONFLICT (partner, day, campaign, term) DO UPDATE SET \
                     bots = bots + excluded.bots, suspects = suspects + excluded.suspects",
                )?;
                for c in &batch.cells {
                    let day = c.day.to_string();
                    let (bots, suspects) = (c.bots as i64, c.suspects as i64);
                    add.execute(params![c.partner, day, c.campaign, c.term, bots, suspects])?;
                }
            }
            tx.commit()?;
            Ok(())
        })
        .await
    }

    pub(super) async fn read_traffic(
        &self,
        partner: &PartnerId,
        from: NaiveDate,
        to: NaiveDate,
    ) -> Result<Vec<TrafficCount>, StoreError> {
        let (partner, from, to) = (partner.to_string(), from.to_string(), to.to_string());
        self.read_for_report(move |conn| {
            let mut query = conn.prepare_cached(
                "SELECT day, campaign, term, bots, suspects FROM traffic_cells \
                 WHERE partner = ?1 AND day >= ?2 AND day <= ?3",
            )?;
            let rows = query.query_map(params![partner, from, to], |row| {
                Ok((
                    row.get::<_, String>(0)?,
                    row.get::<_, String>(1)?,
                    row.get::<_, String>(2)?,
                    row.get::<_, i64>(3)?,
                    row.get::<_, i64>(4)?,
                ))
            })?;
            let mut counts = Vec::new();
            for row in rows {
                let (day, campaign, term, bots, suspects) = row?;
                let day = day
                    .parse()
                    .map_err(|e| StoreError::corrupt("traffic_cells day", e))?;
                counts.push(TrafficCount {
                    cell: CounterCell {
                        day,
                        campaign,
                        term,
                    },
                    bots: bots as u64,
                    suspects: suspects as u64,
                });
            }
            Ok(counts)
        })
        .await
    }
}

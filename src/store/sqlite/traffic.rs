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
                    "INSERT INTO traffic_cells (partner, day, campaign, term, bots, suspects, \
                     overwrites_won, overwrites_lost) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8) \
                     ON CONFLICT (partner, day, campaign, term) DO UPDATE SET \
                     bots = bots + excluded.bots, suspects = suspects + excluded.suspects, \
                     overwrites_won = overwrites_won + excluded.overwrites_won, \
                     overwrites_lost = overwrites_lost + excluded.overwrites_lost",
                )?;
                for c in &batch.cells {
                    let tallies =
                        [c.bots, c.suspects, c.overwrites_won, c.overwrites_lost].map(|n| n as i64);
                    let [bots, suspects, won, lost] = tallies;
                    let day = c.day.to_string();
                    add.execute(params![
                        c.partner, day, c.campaign, c.term, bots, suspects, won, lost
                    ])?;
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
                "SELECT day, campaign, term, bots, suspects, overwrites_won, overwrites_lost \
                 FROM traffic_cells \
                 WHERE partner = ?1 AND day >= ?2 AND day <= ?3",
            )?;
            let rows = query.query_map(params![partner, from, to], |row| {
                Ok((
                    row.get::<_, String>(0)?,
                    row.get::<_, String>(1)?,
                    row.get::<_, String>(2)?,
                    [3, 4, 5, 6].map(|i| row.get::<_, i64>(i).map(|n| n as u64)),
                ))
            })?;
            let mut counts = Vec::new();
            for row in rows {
                let (day, campaign, term, tallies) = row?;
                let [bots, suspects, won, lost] = tallies;
                let day = day
                    .parse()
                    .map_err(|e| StoreError::corrupt("traffic_cells day", e))?;
                counts.push(TrafficCount {
                    cell: CounterCell {
                        day,
                        campaign,
                        term,
                    },
                    bots: bots?,
                    suspects: suspects?,
                    overwrites_won: won?,
                    overwrites_lost: lost?,
                });
            }
            Ok(counts)
        })
        .await
    }
}

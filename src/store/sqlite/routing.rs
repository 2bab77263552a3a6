//! Customers' claims and parked events in SQLite.

use super::*;

#[async_trait]
impl RoutingStore for SqliteStore {
    async fn route_event(&self, event: &Event, now_ms: i64) -> Result<Route, StoreError> {
        let event = event.clone();
        self.write_unsynced(move |conn| {
            let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
            if let Some(claim) = claim_of(&tx, event.customer.as_str())? {
                return Ok(Route::Claimed(claim));
            }
            tx.execute(
                "INSERT OR IGNORE INTO parked (customer, event_id, event, parked_at) \
                 VALUES (?1, ?2, ?3, ?4)",
                params![
                    event.customer.as_str(),
                    event.id.as_str(),
                    to_json(&event),
                    now_ms
                ],
            )?;
            tx.commit()?;
            Ok(Route::Parked)
        })
        .await
    }

    async fn claim_customer(
        &self,
        customer: &CustomerId,
        referral: Option<&Referral>,
    ) -> Result<(Option<Referral>, Vec<Event>), StoreError> {
        let customer = customer.as_str().to_owned();
        let referral = referral.map(to_json);
        self.write_unsynced(move |conn| {
            let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
            tx.execute(
                "INSERT OR IGNORE INTO claims (customer, referral) VALUES (?1, ?2)",
                params![customer, referral],
            )?;
            let claim = claim_of(&tx, &customer)?.unwrap_or(None);
            let parked = json_rows(
                &tx,
                "SELECT event FROM parked WHERE customer = ?1 ORDER BY parked_at, event_id",
                [&customer],
            )?;
            tx.commit()?;
            Ok((claim, parked))
        })
        .await
    }

    async fn claim(&self, customer: &CustomerId) -> Result<Option<Option<Referral>>, StoreError> {
        let customer = customer.as_str().to_owned();
        self.read(move |conn| claim_of(conn, &customer)).await
    }

    async fn unpark(&self, customer: &CustomerId, parked: &[Event]) -> Result<(), StoreError> {
        if parked.is_empty() {
            return Ok(()); // nearly every signup: nothing waited for it
        }
        let customer = customer.as_str().to_owned();
        let ids: Vec<String> = parked.iter().map(|e| e.id.as_str().to_owned()).collect();
        self.write_unsynced(move |conn| {
            let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
            {
                let mut delete =
                    tx.prepare_cached("DELETE FROM parked WHERE customer = ?1 AND event_id = ?2")?;
                for id in &ids {
                    delete.execute(params![customer, id])?;
                }
            }
            tx.commit()?;
            Ok(())
        })
        .await
    }

    async fn expire_parked(&self, before_ms: i64) -> Result<usize, StoreError> {
        self.write(move |conn| {
            let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
            // A claimed customer's events are its claimant's, which forgets
            // them once they are in the partner's inbox.
            let expired = "SELECT customer FROM parked GROUP BY customer \
                 HAVING MIN(parked_at) < ?1 \
                 AND customer NOT IN (SELECT customer FROM claims)";
            tx.execute(
                &format!(
                    "INSERT INTO dead (event_id, event, parked_at) \
                     SELECT event_id, event, parked_at FROM parked \
                     WHERE customer IN ({expired}) ORDER BY parked_at, event_id"
                ),
                [before_ms],
            )?;
            let moved = tx.execute(
                &format!("DELETE FROM parked WHERE customer IN ({expired})"),
                [before_ms],
            )?;
            tx.commit()?;
            Ok(moved)
        })
        .await
    }

    async fn parked_events(
        &self,
        dead: bool,
        limit: usize,
    ) -> Result<Vec<ParkedEvent>, StoreError> {
        let table = if dead { "dead" } else { "parked" };
        self.read(move |conn| {
            let mut query = conn.prepare(&format!(
                "SELECT event, parked_at FROM {table} ORDER BY parked_at, event_id LIMIT ?1"
            ))?;
            let rows = query.query_map([limit as i64], |row| {
                Ok((row.get::<_, String>(0)?, row.get::<_, i64>(1)?))
            })?;
            let mut events = Vec::new();
            for row in rows {
                let (event, parked_at) = row?;
                events.push(ParkedEvent {
                    event: from_json(&event)?,
                    parked_at,
                });
            }
            Ok(events)
        })
        .await
    }

    async fn parked_count(&self) -> Result<u64, StoreError> {
        self.read(|conn| {
            let n: i64 = conn.query_row("SELECT COUNT(*) FROM parked", [], |row| row.get(0))?;
            Ok(n as u64)
        })
        .await
    }
}

/// The claim on `customer`, if claimed: `Some(None)` for a customer that
/// signed up without a valid click.
fn claim_of(conn: &Connection, customer: &str) -> Result<Option<Option<Referral>>, StoreError> {
    let found: Option<Option<String>> = conn
        .query_row(
            "SELECT referral FROM claims WHERE customer = ?1",
            [customer],
            |row| row.get(0),
        )
        .optional()?;
    match found {
        None => Ok(None),
        Some(None) => Ok(Some(None)),
        Some(Some(json)) => Ok(Some(Some(from_json(&json)?))),
    }
}

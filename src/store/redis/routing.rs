//! Customers' claims and parked events in Redis, each change one Lua
//! script on the customer's slot.

use super::*;

#[async_trait]
impl RoutingStore for RedisStore {
    /// A batch of 2,000 events holds a few hundred customers, and a signup
    /// (or a customer this worker has not seen) is a round trip: 64 in
    /// flight instead of 16 applied two workers' mixed stream at 46,000 to
    /// 52,000 events a second instead of 38,000 to 50,000 (`loadtest/events`,
    /// two alternating runs), one worker's about the same. (Embedded, 64
    /// was slower: the calls queue for the one writer connection.)
    fn routing_concurrency(&self) -> usize {
        64
    }

    async fn route_event(&self, event: &Event, now_ms: i64) -> Result<Route, StoreError> {
        let customer = event.customer.as_str();
        // Most events find their customer claimed (its signup came first):
        // one read routes them. A claim never changes once made, so what
        // this read finds holds. (Another worker's first event of a
        // customer this worker never saw lands here: with two workers,
        // about one event a customer.)
        let claim: Option<String> = redis::cmd("GET")
            .arg(keys::owned(|k| keys::claim(k, customer)))
            .query_async(&mut self.conn())
            .await
            .map_err(unavailable)?;
        if let Some(claim) = claim {
            return Ok(Route::Claimed(decode(&claim)?));
        }
        let member = format!("{customer}\t{}", event.id);
        // Indexed before it is parked: a claimant that takes the event
        // right after removes the entry, and none is left behind. Should
        // the event not be parked after all, the entry goes again.
        self.exec(
            redis::cmd("ZADD")
                .arg(keys::PARKED)
                .arg("NX")
                .arg(now_ms)
                .arg(&member),
        )
        .await?;
        let record = encode(&ParkedEvent {
            event: event.clone(),
            parked_at: now_ms,
        });
        let claim: String = self
            .route_event
            .key(keys::owned(|k| keys::claim(k, customer)))
            .key(keys::owned(|k| keys::customer(k, customer, "parked")))
            .arg(record)
            .invoke_async(&mut self.conn())
            .await
            .map_err(unavailable)?;
        if claim.is_empty() {
            return Ok(Route::Parked);
        }
        self.exec(redis::cmd("ZREM").arg(keys::PARKED).arg(&member))
            .await?;
        Ok(Route::Claimed(decode(&claim)?))
    }

    async fn claim(&self, customer: &CustomerId) -> Result<Option<Option<Referral>>, StoreError> {
        let claim: Option<String> = redis::cmd("GET")
            .arg(keys::owned(|k| keys::claim(k, customer.as_str())))
            .query_async(&mut self.conn())
            .await
            .map_err(unavailable)?;
        claim.map(|c| decode(&c)).transpose()
    }

    async fn claim_customer(
        &self,
        customer: &CustomerId,
        referral: Option<&Referral>,
    ) -> Result<(Option<Referral>, Vec<Event>), StoreError> {
        let customer = customer.as_str();
        let (claim, parked): (String, Vec<String>) = self
            .claim_customer
            .key(keys::owned(|k| keys::claim(k, customer)))
            .key(keys::owned(|k| keys::customer(k, customer, "parked")))
            .arg(encode(&referral))
            .invoke_async(&mut self.conn())
            .await
            .map_err(unavailable)?;
        let parked = parked
            .iter()
            .map(|raw| decode::<ParkedEvent>(raw).map(|p| p.event))
            .collect::<Result<_, _>>()?;
        Ok((decode(&claim)?, parked))
    }

    async fn unpark(&self, customer: &CustomerId, parked: &[Event]) -> Result<(), StoreError> {
        let customer = customer.as_str();
        self.exec(redis::cmd("DEL").arg(keys::owned(|k| keys::customer(k, customer, "parked"))))
            .await?;
        if parked.is_empty() {
            return Ok(());
        }
        let mut remove = redis::cmd("ZREM");
        remove.arg(keys::PARKED);
        for event in parked {
            remove.arg(format!("{customer}\t{}", event.id));
        }
        self.exec(&remove).await
    }

    async fn expire_parked(&self, before_ms: i64) -> Result<usize, StoreError> {
        let members: Vec<String> = redis::cmd("ZRANGE")
            .arg(keys::PARKED)
            .arg("-inf")
            .arg(format!("({before_ms}"))
            .arg("BYSCORE")
            .arg("LIMIT")
            .arg(0)
            .arg(1000)
            .query_async(&mut self.conn())
            .await
            .map_err(unavailable)?;
        let mut moved = 0;
        let customers: std::collections::BTreeSet<&str> = members
            .iter()
            .filter_map(|m| m.split_once('\t').map(|(c, _)| c))
            .collect();
        let mut claimed = std::collections::BTreeSet::new();
        for customer in customers {
            let n: i64 = self
                .expire_parked
                .key(keys::owned(|k| keys::claim(k, customer)))
                .key(keys::owned(|k| keys::customer(k, customer, "parked")))
                .key(keys::owned(|k| keys::customer(k, customer, "dead")))
                .invoke_async(&mut self.conn())
                .await
                .map_err(unavailable)?;
            if n < 0 {
                claimed.insert(customer);
                continue;
            }
            moved += n as usize;
            if n > 0 {
                self.exec(
                    redis::cmd("ZADD")
                        .arg(keys::DEAD)
                        .arg(before_ms)
                        .arg(customer),
                )
                .await?;
            }
        }
        // A claimed customer's entries stay until its claimant forgets them.
        let gone: Vec<&String> = members
            .iter()
            .filter(|m| !m.split_once('\t').is_some_and(|(c, _)| claimed.contains(c)))
            .collect();
        if !gone.is_empty() {
            self.exec(redis::cmd("ZREM").arg(keys::PARKED).arg(&gone))
                .await?;
        }
        Ok(moved)
    }

    async fn parked_events(
        &self,
        dead: bool,
        limit: usize,
    ) -> Result<Vec<ParkedEvent>, StoreError> {
        let index = if dead { keys::DEAD } else { keys::PARKED };
        let members: Vec<String> = redis::cmd("ZRANGE")
            .arg(index)
            .arg(0)
            .arg(limit.saturating_sub(1))
            .query_async(&mut self.conn())
            .await
            .map_err(unavailable)?;
        let mut customers: Vec<&str> = members
            .iter()
            .map(|m| m.split_once('\t').map_or(m.as_str(), |(c, _)| c))
            .collect();
        customers.dedup();
        let part = if dead { "dead" } else { "parked" };
        let mut events = Vec::new();
        for customer in customers {
            let raw: Vec<String> = redis::cmd("LRANGE")
                .arg(keys::owned(|k| keys::customer(k, customer, part)))
                .arg(0)
                .arg(limit)
                .query_async(&mut self.conn())
                .await
                .map_err(unavailable)?;
            for record in raw {
                events.push(decode::<ParkedEvent>(&record)?);
            }
        }
        events.sort_by(|a, b| (a.parked_at, &a.event.id).cmp(&(b.parked_at, &b.event.id)));
        events.dedup_by(|a, b| a.event.id == b.event.id);
        events.truncate(limit);
        Ok(events)
    }

    async fn parked_count(&self) -> Result<u64, StoreError> {
        redis::cmd("ZCARD")
            .arg(keys::PARKED)
            .query_async(&mut self.conn())
            .await
            .map_err(unavailable)
    }
}

//! Held customers in Redis: the hold is on the customer's record in its
//! partner's book; the `{holds}` slot keeps each held customer's partner
//! and a listing, written just before the commit that writes the hold.
//! An entry whose commit never happened names a customer with no hold,
//! and the reader skips it.

use super::*;
use crate::conversions::customer::Customer;
use crate::store::{hold_cursor, HeldCustomer, HoldStore};

impl RedisStore {
    /// Indexes the customers of a book step that carry a hold. Holds are
    /// rare, so a step without one costs nothing; with one, the writes
    /// are the same each time (a hold keeps its `held_at`).
    pub(super) async fn index_holds(
        &self,
        partner: &PartnerId,
        customers: &[Customer],
    ) -> Result<(), StoreError> {
        let held: Vec<(&str, i64)> = customers
            .iter()
            .filter_map(|c| Some((c.id.as_str(), c.hold.as_ref()?.held_at)))
            .collect();
        if held.is_empty() {
            return Ok(());
        }
        let mut pipe = redis::pipe();
        pipe.atomic();
        for (customer, held_at) in held {
            pipe.hset(keys::HOLD_OWNERS, customer, partner.as_str())
                .zadd(keys::HOLDS, hold_cursor(held_at, customer), 0);
        }
        pipe.query_async::<()>(&mut self.conn())
            .await
            .map_err(unavailable)
    }
}

#[async_trait]
impl HoldStore for RedisStore {
    async fn hold_partner(&self, customer: &CustomerId) -> Result<Option<PartnerId>, StoreError> {
        self.owner_in(keys::HOLD_OWNERS, customer.as_str()).await
    }

    async fn holds(
        &self,
        after: Option<&str>,
        limit: usize,
    ) -> Result<Vec<HeldCustomer>, StoreError> {
        let members = self.lex_page(keys::HOLDS, after, limit).await?;
        let mut held = Vec::with_capacity(members.len());
        for member in members {
            let corrupt = || StoreError::corrupt("hold index entry", &member);
            let (at, customer) = member.split_once('.').ok_or_else(corrupt)?;
            let held_at: i64 = at.parse().map_err(|_| corrupt())?;
            let Ok(id) = CustomerId::parse(customer) else {
                return Err(corrupt());
            };
            if let Some(partner) = self.hold_partner(&id).await? {
                held.push(HeldCustomer {
                    customer: customer.to_owned(),
                    partner,
                    held_at,
                });
            }
        }
        Ok(held)
    }
}

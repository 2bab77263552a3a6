//! Payouts in Redis: each record in its partner's `payouts` hash, written
//! by the book step that changes it (`books.rs`); the `{payouts}` slot
//! holds the owner of each id and an index per status, written before the
//! commit and checked against the records when read.

use super::*;
use crate::conversions::book::{Payout, PayoutStatus};
use crate::ids::PayoutId;

/// Ids read from an index per round while a listing fills its page.
const INDEX_ROUND: usize = 200;

#[async_trait]
impl PayoutStore for RedisStore {
    async fn index_payout(&self, payout: &Payout) -> Result<(), StoreError> {
        let id = payout.id.as_str();
        let mut pipe = redis::pipe();
        pipe.atomic()
            .hset(keys::PAYOUT_OWNERS, id, payout.partner.as_str())
            .zadd(index("all"), id, 0)
            .zadd(index(payout.status.as_str()), id, 0);
        pipe.query_async::<()>(&mut self.conn())
            .await
            .map_err(unavailable)
    }

    async fn unindex_payout(&self, id: &PayoutId, old: PayoutStatus) -> Result<(), StoreError> {
        self.exec(redis::cmd("ZREM").arg(index(old.as_str())).arg(id.as_str()))
            .await
    }

    async fn payout_partner(&self, id: &PayoutId) -> Result<Option<PartnerId>, StoreError> {
        self.owner_in(keys::PAYOUT_OWNERS, id.as_str()).await
    }

    async fn payouts(
        &self,
        status: Option<PayoutStatus>,
        after: Option<&PayoutId>,
        limit: usize,
    ) -> Result<Vec<Payout>, StoreError> {
        let key = index(status.map_or("all", PayoutStatus::as_str));
        let mut from = after.map(|id| id.as_str().to_owned());
        let mut found = Vec::new();
        while found.len() < limit {
            let ids = self.lex_page(&key, from.as_deref(), INDEX_ROUND).await?;
            let Some(last) = ids.last() else { break };
            from = Some(last.clone());
            let round = ids.len();
            for payout in self.records_of(&ids).await? {
                match status {
                    Some(wanted) if payout.status != wanted => {
                        self.drop_stale(&key, &payout, wanted).await?
                    }
                    _ if found.len() < limit => found.push(payout),
                    _ => {}
                }
            }
            if round < INDEX_ROUND {
                break;
            }
        }
        Ok(found)
    }

    async fn partner_payouts(
        &self,
        partner: &PartnerId,
        before: Option<&PayoutId>,
        limit: usize,
    ) -> Result<Vec<Payout>, StoreError> {
        let partner = partner.as_str();
        let ids: Vec<String> = redis::cmd("ZRANGE")
            .arg(keys::owned(|k| keys::book(k, partner, "payout_ids")))
            .arg(before.map_or("+".to_owned(), |id| format!("({id}")))
            .arg("-")
            .arg("BYLEX")
            .arg("REV")
            .arg("LIMIT")
            .arg(0)
            .arg(limit)
            .query_async(&mut self.conn())
            .await
            .map_err(unavailable)?;
        self.partner_records(partner, &ids).await
    }
}

fn index(status: &str) -> String {
    keys::owned(|k| keys::payout_index(k, status))
}

impl RedisStore {
    /// The records of `ids` that were committed, in the order given.
    async fn records_of(&self, ids: &[String]) -> Result<Vec<Payout>, StoreError> {
        let owners: Vec<Option<String>> = redis::cmd("HMGET")
            .arg(keys::PAYOUT_OWNERS)
            .arg(ids)
            .query_async(&mut self.conn())
            .await
            .map_err(unavailable)?;
        let mut by_partner: HashMap<&str, Vec<String>> = HashMap::new();
        for (id, owner) in ids.iter().zip(&owners) {
            if let Some(owner) = owner {
                by_partner.entry(owner).or_default().push(id.clone());
            }
        }
        let mut records = Vec::with_capacity(ids.len());
        for (partner, ids) in by_partner {
            records.extend(self.partner_records(partner, &ids).await?);
        }
        records.sort_by(|a, b| a.id.cmp(&b.id));
        Ok(records)
    }

    /// The partner's records of `ids` that exist, in the order given.
    async fn partner_records(
        &self,
        partner: &str,
        ids: &[String],
    ) -> Result<Vec<Payout>, StoreError> {
        let key = keys::owned(|k| keys::book(k, partner, "payouts"));
        self.json_fields(&key, ids).await
    }

    /// Drops a payout from the index of `listed` once its record has moved
    /// on from that status for good (the step that moved it stopped before
    /// dropping it). A record still `requested` under another index is a
    /// settlement on its way: it stays.
    async fn drop_stale(
        &self,
        key: &str,
        payout: &Payout,
        listed: PayoutStatus,
    ) -> Result<(), StoreError> {
        if listed == PayoutStatus::Requested {
            self.exec(redis::cmd("ZREM").arg(key).arg(payout.id.as_str()))
                .await?;
        }
        Ok(())
    }
}

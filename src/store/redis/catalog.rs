//! Partners and campaigns in Redis: JSON records in hashes, and the
//! catalog version that rises with every change.

use super::*;

#[async_trait]
impl CatalogStore for RedisStore {
    async fn catalog_version(&self) -> Result<u64, StoreError> {
        redis::cmd("GET")
            .arg(keys::VERSION)
            .query_async::<Option<u64>>(&mut self.conn())
            .await
            .map(Option::unwrap_or_default)
            .map_err(unavailable)
    }

    async fn load_catalog(&self) -> Result<CatalogSnapshot, StoreError> {
        // One slot, read in one transaction: partners and version agree.
        let (version, partners): (Option<u64>, HashMap<String, String>) = redis::pipe()
            .atomic()
            .get(keys::VERSION)
            .hgetall(keys::PARTNERS)
            .query_async(&mut self.conn())
            .await
            .map_err(unavailable)?;
        let partners: Vec<Partner> = partners
            .values()
            .map(|raw| decode(raw))
            .collect::<Result<_, _>>()?;
        let mut pipe = redis::pipe();
        for partner in &partners {
            pipe.hgetall(keys::owned(|k| keys::campaigns(k, partner.id.as_str())));
        }
        let campaign_maps: Vec<HashMap<String, String>> = if partners.is_empty() {
            Vec::new()
        } else {
            pipe.query_async(&mut self.conn())
                .await
                .map_err(unavailable)?
        };
        let mut campaigns = Vec::new();
        for map in campaign_maps {
            for raw in map.values() {
                campaigns.push(decode::<Campaign>(raw)?);
            }
        }
        Ok(CatalogSnapshot {
            version: version.unwrap_or_default(),
            partners,
            campaigns,
        })
    }

    async fn insert_partner(&self, partner: &Partner) -> Result<(), StoreError> {
        let inserted = self
            .script_flag(
                &self.insert_partner,
                &[keys::PARTNERS, keys::TOKENS, keys::VERSION],
                &[partner.id.as_str(), &encode(partner), &partner.token_hash],
            )
            .await?;
        inserted.then_some(()).ok_or(StoreError::Conflict)
    }

    async fn update_partner(&self, partner: &Partner) -> Result<(), StoreError> {
        let updated = self
            .script_flag(
                &self.update_partner,
                &[keys::PARTNERS, keys::VERSION],
                &[partner.id.as_str(), &encode(partner)],
            )
            .await?;
        updated.then_some(()).ok_or(StoreError::NotFound)
    }

    async fn partner(&self, id: &PartnerId) -> Result<Option<Partner>, StoreError> {
        let raw: Option<String> = redis::cmd("HGET")
            .arg(keys::PARTNERS)
            .arg(id.as_str())
            .query_async(&mut self.conn())
            .await
            .map_err(unavailable)?;
        raw.map(|r| decode(&r)).transpose()
    }

    async fn partner_by_token_hash(&self, hash: &str) -> Result<Option<PartnerId>, StoreError> {
        let raw: Option<String> = redis::cmd("HGET")
            .arg(keys::TOKENS)
            .arg(hash)
            .query_async(&mut self.conn())
            .await
            .map_err(unavailable)?;
        Ok(raw.and_then(|id| PartnerId::parse(&id).ok()))
    }

    async fn insert_campaign(&self, campaign: &Campaign) -> Result<(), StoreError> {
        let inserted = self
            .script_flag(
                &self.insert_campaign,
                &[
                    &keys::owned(|k| keys::campaigns(k, campaign.partner.as_str())),
                    keys::VERSION,
                ],
                &[campaign.slug.as_str(), &encode(campaign)],
            )
            .await?;
        inserted.then_some(()).ok_or(StoreError::Conflict)
    }

    async fn campaigns(&self, partner: &PartnerId) -> Result<Vec<Campaign>, StoreError> {
        let map: HashMap<String, String> = redis::cmd("HGETALL")
            .arg(keys::owned(|k| keys::campaigns(k, partner.as_str())))
            .query_async(&mut self.conn())
            .await
            .map_err(unavailable)?;
        let mut campaigns: Vec<Campaign> = map
            .values()
            .map(|raw| decode(raw))
            .collect::<Result<_, _>>()?;
        campaigns.sort_by(|a, b| a.slug.cmp(&b.slug));
        Ok(campaigns)
    }
}

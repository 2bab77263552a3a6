//! Partners and campaigns in Redis: JSON records in hashes, the catalog
//! version that rises with every change, and a sorted set of what changed
//! at which version, for `catalog_changes`.

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

    async fn catalog_changes(&self, since: u64) -> Result<CatalogSnapshot, StoreError> {
        // The version and the list of changes agree (one transaction); a
        // record read after them may be newer still, which the next call
        // reads again: applying a record twice changes nothing.
        let (version, changed): (Option<u64>, Vec<String>) = redis::pipe()
            .atomic()
            .get(keys::VERSION)
            .zrangebyscore(keys::CHANGES, format!("({since}"), "+inf")
            .query_async(&mut self.conn())
            .await
            .map_err(unavailable)?;
        let (partners, campaigns) = self.changed_records(&changed).await?;
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
                &[keys::PARTNERS, keys::TOKENS, keys::VERSION, keys::CHANGES],
                &[partner.id.as_str(), &encode(partner), &partner.token_hash],
            )
            .await?;
        inserted.then_some(()).ok_or(StoreError::Conflict)
    }

    async fn update_partner(&self, partner: &Partner) -> Result<(), StoreError> {
        let updated = self
            .script_flag(
                &self.update_partner,
                &[keys::PARTNERS, keys::VERSION, keys::CHANGES],
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

    async fn partners(
        &self,
        after: Option<&PartnerId>,
        limit: usize,
    ) -> Result<Vec<Partner>, StoreError> {
        // Ids are read whole and sorted: an admin's page, not a hot path,
        // and one short string per partner.
        let mut ids: Vec<String> = redis::cmd("HKEYS")
            .arg(keys::PARTNERS)
            .query_async(&mut self.conn())
            .await
            .map_err(unavailable)?;
        ids.sort_unstable();
        let from = after.map_or(0, |a| ids.partition_point(|id| id.as_str() <= a.as_str()));
        let page: Vec<&String> = ids.iter().skip(from).take(limit).collect();
        if page.is_empty() {
            return Ok(Vec::new());
        }
        let raw: Vec<Option<String>> = redis::cmd("HMGET")
            .arg(keys::PARTNERS)
            .arg(&page)
            .query_async(&mut self.conn())
            .await
            .map_err(unavailable)?;
        raw.iter().flatten().map(|r| decode(r)).collect()
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
                    keys::CHANGES,
                ],
                &[
                    campaign.slug.as_str(),
                    &encode(campaign),
                    campaign.partner.as_str(),
                ],
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

impl RedisStore {
    /// The records of `changed` (members of `keys::CHANGES`), in one pipeline.
    async fn changed_records(
        &self,
        changed: &[String],
    ) -> Result<(Vec<Partner>, Vec<Campaign>), StoreError> {
        if changed.is_empty() {
            return Ok((Vec::new(), Vec::new()));
        }
        let mut pipe = redis::pipe();
        let mut is_partner = Vec::with_capacity(changed.len());
        for member in changed {
            match member.split('\t').collect::<Vec<_>>()[..] {
                ["p", id] => pipe.hget(keys::PARTNERS, id),
                ["c", partner, slug] => {
                    pipe.hget(keys::owned(|k| keys::campaigns(k, partner)), slug)
                }
                _ => {
                    return Err(StoreError::corrupt(
                        keys::CHANGES,
                        format!("member {member:?}"),
                    ))
                }
            };
            is_partner.push(member.starts_with('p'));
        }
        let raws: Vec<Option<String>> = pipe
            .query_async(&mut self.conn())
            .await
            .map_err(unavailable)?;
        let (mut partners, mut campaigns) = (Vec::new(), Vec::new());
        for ((raw, partner), member) in raws.into_iter().zip(is_partner).zip(changed) {
            let raw = raw.ok_or_else(|| {
                StoreError::corrupt(keys::CHANGES, format!("{member:?} has no record"))
            })?;
            if partner {
                partners.push(decode(&raw)?);
            } else {
                campaigns.push(decode(&raw)?);
            }
        }
        Ok((partners, campaigns))
    }
}

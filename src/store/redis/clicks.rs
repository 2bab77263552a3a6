//! Click batches in Redis: one pipeline per slot (`click_batch`), and
//! the report's counters and unique-visitor sketches read back.

use super::*;

#[async_trait]
impl ClickStore for RedisStore {
    async fn record_clicks(&self, clicks: &[Click]) -> Result<(), StoreError> {
        if clicks.is_empty() {
            return Ok(());
        }
        let pipelines = self.click_pipelines(clicks);
        match self.run_pipelines(&pipelines).await {
            Err(e) if is_noscript(&e) => {
                // Every step is idempotent, so the batch is simply sent again.
                self.load_click_scripts().await.map_err(unavailable)?;
                self.run_pipelines(&pipelines).await.map_err(unavailable)
            }
            other => other.map_err(unavailable),
        }
    }

    async fn click(&self, id: &ClickId) -> Result<Option<Click>, StoreError> {
        let raw: Option<String> = redis::cmd("GET")
            .arg(keys::owned(|k| keys::click(k, id)))
            .query_async(&mut self.conn())
            .await
            .map_err(unavailable)?;
        Ok(raw.and_then(|r| {
            serde_json::from_str::<ClickRecord>(&r)
                .ok()
                .and_then(ClickRecord::into_click)
        }))
    }

    async fn last_click(&self, visitor: &VisitorId) -> Result<Option<Click>, StoreError> {
        match self.visitor_click_ids(visitor).await?.first() {
            Some(id) => self.click(id).await,
            None => Ok(None),
        }
    }

    async fn visitor_clicks(
        &self,
        visitor: &VisitorId,
        limit: usize,
    ) -> Result<Vec<Click>, StoreError> {
        let ids = self.visitor_click_ids(visitor).await?;
        let mut clicks = Vec::with_capacity(ids.len());
        for id in &ids {
            // A record expires with its click: one gone is left out.
            clicks.extend(self.click(id).await?);
        }
        // As the embedded store orders them: by time, then by id, which
        // starts with the click's millisecond.
        clicks.sort_unstable_by_key(|c| std::cmp::Reverse((c.at, c.click_id.0)));
        clicks.truncate(limit.min(MAX_VISITOR_CLICKS));
        Ok(clicks)
    }

    async fn add_traffic(&self, batch: &crate::store::TrafficBatch) -> Result<(), StoreError> {
        self.write_traffic(batch).await
    }

    async fn traffic_counts(
        &self,
        partner: &PartnerId,
        from: NaiveDate,
        to: NaiveDate,
    ) -> Result<Vec<crate::store::TrafficCount>, StoreError> {
        self.read_traffic(partner, from, to).await
    }

    async fn click_counts(
        &self,
        partner: &PartnerId,
        from: NaiveDate,
        to: NaiveDate,
    ) -> Result<Vec<ClickCount>, StoreError> {
        let days: Vec<NaiveDate> = from.iter_days().take_while(|d| *d <= to).collect();
        if days.is_empty() {
            return Ok(Vec::new());
        }
        let mut pipe = redis::pipe();
        for day in &days {
            pipe.hgetall(keys::owned(|k| {
                keys::day_clicks(k, partner.as_str(), &day.to_string())
            }));
        }
        let maps: Vec<HashMap<String, u64>> = pipe
            .query_async(&mut self.conn())
            .await
            .map_err(unavailable)?;
        let mut counts = Vec::new();
        for (day, map) in days.iter().zip(maps) {
            for (field, clicks) in map {
                let (campaign, term) = field.split_once('\t').unwrap_or((&field, ""));
                counts.push(ClickCount {
                    cell: CounterCell {
                        day: *day,
                        campaign: campaign.to_owned(),
                        term: term.to_owned(),
                    },
                    clicks,
                });
            }
        }
        Ok(counts)
    }

    async fn unique_visitors(
        &self,
        partner: &PartnerId,
        cells: &[CounterCell],
    ) -> Result<u64, StoreError> {
        if cells.is_empty() {
            return Ok(0);
        }
        let mut pfcount = redis::cmd("PFCOUNT");
        let (mut field, mut key) = (String::new(), String::new());
        for cell in cells {
            keys::field(&mut field, &cell.campaign, &cell.term);
            keys::day_visitors(&mut key, partner.as_str(), &cell.day.to_string(), &field);
            pfcount.arg(&key);
        }
        pfcount
            .query_async(&mut self.conn())
            .await
            .map_err(unavailable)
    }
}

impl RedisStore {
    /// The visitor's latest click ids, newest first: its key holds
    /// `time:click id,…` (`scripts/last_clicks.lua`).
    async fn visitor_click_ids(&self, visitor: &VisitorId) -> Result<Vec<ClickId>, StoreError> {
        let stored: Option<String> = redis::cmd("GET")
            .arg(keys::owned(|k| keys::visitor(k, visitor)))
            .query_async(&mut self.conn())
            .await
            .map_err(unavailable)?;
        Ok(stored
            .as_deref()
            .unwrap_or_default()
            .split(',')
            .filter_map(|entry| entry.split_once(':'))
            .filter_map(|(_, id)| ClickId::parse(id))
            .collect())
    }
}

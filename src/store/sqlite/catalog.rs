//! Partners and campaigns in SQLite: JSON records, and the catalog
//! version that rises with every change in the same transaction; each row
//! keeps the version it last changed at, for `catalog_changes`.

use super::*;

#[async_trait]
impl CatalogStore for SqliteStore {
    async fn catalog_version(&self) -> Result<u64, StoreError> {
        self.read(|conn| Ok(read_catalog_version(conn)? as u64))
            .await
    }

    async fn load_catalog(&self) -> Result<CatalogSnapshot, StoreError> {
        self.read(|conn| {
            let tx = conn.transaction()?;
            let version = read_catalog_version(&tx)?;
            let partners = json_rows(&tx, "SELECT record FROM partners ORDER BY id", [])?;
            let campaigns = json_rows(
                &tx,
                "SELECT record FROM campaigns ORDER BY partner, slug",
                [],
            )?;
            Ok(CatalogSnapshot {
                version: version as u64,
                partners,
                campaigns,
            })
        })
        .await
    }

    async fn catalog_changes(&self, since: u64) -> Result<CatalogSnapshot, StoreError> {
        // In `changed_at` order, so the planner walks the `changed_at`
        // indexes from `since` on (by key, it would scan every row).
        let since = i64::try_from(since).unwrap_or(i64::MAX);
        self.read(move |conn| {
            let tx = conn.transaction()?;
            let version = read_catalog_version(&tx)?;
            let partners = json_rows(
                &tx,
                "SELECT record FROM partners WHERE changed_at > ?1 ORDER BY changed_at",
                [since],
            )?;
            let campaigns = json_rows(
                &tx,
                "SELECT record FROM campaigns WHERE changed_at > ?1 ORDER BY changed_at",
                [since],
            )?;
            Ok(CatalogSnapshot {
                version: version as u64,
                partners,
                campaigns,
            })
        })
        .await
    }

    async fn insert_partner(&self, partner: &Partner) -> Result<(), StoreError> {
        let row = partner_row(partner);
        self.write(move |conn| {
            change_catalog(
                conn,
                "INSERT OR IGNORE INTO partners (id, token_hash, record, changed_at) \
                 VALUES (?1, ?2, ?3, ?4)",
                row,
                StoreError::Conflict,
            )
        })
        .await
    }

    async fn update_partner(&self, partner: &Partner) -> Result<(), StoreError> {
        let row = partner_row(partner);
        self.write(move |conn| {
            change_catalog(
                conn,
                "UPDATE partners SET token_hash = ?2, record = ?3, changed_at = ?4 WHERE id = ?1",
                row,
                StoreError::NotFound,
            )
        })
        .await
    }

    async fn partner(&self, id: &PartnerId) -> Result<Option<Partner>, StoreError> {
        let id = id.as_str().to_owned();
        self.read(move |conn| {
            let mut found = json_rows(conn, "SELECT record FROM partners WHERE id = ?1", [id])?;
            Ok(found.pop())
        })
        .await
    }

    async fn partners(
        &self,
        after: Option<&PartnerId>,
        limit: usize,
    ) -> Result<Vec<Partner>, StoreError> {
        let after = after.map_or(String::new(), |id| id.as_str().to_owned());
        self.read(move |conn| {
            json_rows(
                conn,
                "SELECT record FROM partners WHERE id > ?1 ORDER BY id LIMIT ?2",
                params![after, limit as i64],
            )
        })
        .await
    }

    async fn partner_by_token_hash(&self, hash: &str) -> Result<Option<PartnerId>, StoreError> {
        let hash = hash.to_owned();
        self.read(move |conn| {
            let mut found: Vec<Partner> = json_rows(
                conn,
                "SELECT record FROM partners WHERE token_hash = ?1",
                [hash],
            )?;
            Ok(found.pop().map(|p| p.id))
        })
        .await
    }

    async fn insert_campaign(&self, campaign: &Campaign) -> Result<(), StoreError> {
        let row = [
            campaign.partner.as_str().to_owned(),
            campaign.slug.as_str().to_owned(),
            to_json(campaign),
        ];
        self.write(move |conn| {
            change_catalog(
                conn,
                "INSERT OR IGNORE INTO campaigns (partner, slug, record, changed_at) \
                 VALUES (?1, ?2, ?3, ?4)",
                row,
                StoreError::Conflict,
            )
        })
        .await
    }

    async fn campaigns(&self, partner: &PartnerId) -> Result<Vec<Campaign>, StoreError> {
        let partner = partner.as_str().to_owned();
        self.read(move |conn| {
            json_rows(
                conn,
                "SELECT record FROM campaigns WHERE partner = ?1 ORDER BY slug",
                [partner],
            )
        })
        .await
    }
}

/// One catalog change and the catalog version's rise, in one synced
/// transaction. `sql` writes `row` with the new version as `?4`, the row's
/// `changed_at`; `unchanged` is the error when it touched no row (an insert
/// that found the key taken, an update that found none).
fn change_catalog(
    conn: &mut Connection,
    sql: &str,
    row: [String; 3],
    unchanged: StoreError,
) -> Result<(), StoreError> {
    let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
    let version = read_catalog_version(&tx)? + 1;
    let [a, b, c] = row;
    if tx.execute(sql, params![a, b, c, version])? == 0 {
        return Err(unchanged);
    }
    tx.execute(
        "UPDATE settings SET value = ?1 WHERE name = 'catalog_version'",
        [version],
    )?;
    tx.commit()?;
    Ok(())
}

fn read_catalog_version(conn: &Connection) -> rusqlite::Result<i64> {
    conn.query_row(
        "SELECT CAST(value AS INTEGER) FROM settings WHERE name = 'catalog_version'",
        [],
        |row| row.get(0),
    )
}

/// A partner's row: id, token hash, record.
fn partner_row(partner: &Partner) -> [String; 3] {
    [
        partner.id.as_str().to_owned(),
        partner.token_hash.clone(),
        to_json(partner),
    ]
}

//! Unit tests of the embedded store: migrations, page size, multi-row
//! statements, pending sketches.

use super::*;

fn acme() -> PartnerId {
    PartnerId::parse("acme").unwrap()
}

/// Clicks stored one row each (schemas 1 to 3) move into bodies, and
/// are found by id and by visitor after the migration.
#[tokio::test]
async fn clicks_stored_a_row_each_are_found_after_the_move_into_bodies() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("v3.db");
    let now = Utc::now().timestamp();
    let clicks: Vec<Click> = (0..1_500u32)
        .map(|n| {
            let mut id = ClickId::random().0;
            // A thousand clicks a second apart: bodies are cut by span.
            let ms = (now as u64 - 3_600 + u64::from(n)) * 1_000;
            id[..6].copy_from_slice(&ms.to_be_bytes()[2..]);
            Click {
                click_id: ClickId(id),
                visitor_id: VisitorId([(n % 7) as u8; 16]),
                partner: "acme".into(),
                campaign: "spring".into(),
                term: (n % 2 == 0).then(|| format!("t{n}").into()),
                at: (ms / 1_000) as i64,
            }
        })
        .collect();
    {
        let mut conn = Connection::open(&path).unwrap();
        let tx = conn.transaction().unwrap();
        for step in &MIGRATIONS[..3] {
            tx.execute_batch(step.sql).unwrap();
        }
        tx.pragma_update(None, "user_version", 3).unwrap();
        for c in &clicks {
            tx.execute(
                "INSERT INTO clicks (id, visitor, partner, campaign, term, at) \
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
                params![
                    c.click_id.0,
                    c.visitor_id.0,
                    &*c.partner,
                    &*c.campaign,
                    c.term.as_deref().unwrap_or(""),
                    c.at
                ],
            )
            .unwrap();
        }
        let last = &clicks[clicks.len() - 1];
        tx.execute(
            "INSERT INTO last_clicks (visitor, click, at) VALUES (?1, ?2, ?3)",
            params![last.visitor_id.0, last.click_id.0, last.at],
        )
        .unwrap();
        tx.commit().unwrap();
    }
    let store = SqliteStore::open(&path, Duration::from_secs(86_400)).unwrap();
    for c in clicks.iter().step_by(37).chain(clicks.last()) {
        assert_eq!(store.click(&c.click_id).await.unwrap().as_ref(), Some(c));
    }
    let last = clicks.last().unwrap();
    assert_eq!(
        store.last_click(&last.visitor_id).await.unwrap().as_ref(),
        Some(last)
    );
    let conn = relock(&store.reader);
    let old_table: i64 = conn
        .query_row(
            "SELECT COUNT(*) FROM sqlite_schema WHERE name = 'clicks'",
            [],
            |r| r.get(0),
        )
        .unwrap();
    assert_eq!(old_table, 0, "the table of rows is gone");
    let bodies: i64 = conn
        .query_row("SELECT COUNT(*) FROM click_batches", [], |r| r.get(0))
        .unwrap();
    assert!(
        bodies >= 1_500 / (click_log::MAX_SPAN_MS as i64 / 1_000 + 1),
        "{bodies}"
    );
}

/// A database written by the first schema keeps its books, customers
/// and tier history through the migrations.
#[tokio::test]
async fn a_first_schema_database_keeps_its_books_when_migrated_and_rewrites_them_binary() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("v1.db");
    {
        let conn = Connection::open(&path).unwrap();
        conn.execute_batch(MIGRATIONS[0].sql).unwrap();
        conn.pragma_update(None, "user_version", 1).unwrap();
        let customer = Customer::new(
            "cus_1",
            Referral {
                partner: PartnerId::parse("acme").unwrap(),
                campaign: "spring".into(),
                term: None,
                click_at: 1_000,
                found: None,
            },
        );
        conn.execute(
            "INSERT INTO customers (partner, id, record) VALUES ('acme', 'cus_1', ?1)",
            [to_json(&customer)],
        )
        .unwrap();
        let book = Book {
            entries: 7,
            ..Book::default()
        };
        conn.execute(
            "INSERT INTO books (partner, version, book) VALUES ('acme', 3, ?1)",
            [to_json(&book)],
        )
        .unwrap();
        conn.execute(
            "INSERT INTO history (partner, member, at) VALUES ('acme', 'a\te1\t120', 5000)",
            [],
        )
        .unwrap();
    }
    let store = SqliteStore::open(&path, Duration::from_secs(86_400)).unwrap();
    let request = BookRequest {
        customers: ["cus_1".to_owned()].into(),
        history_from: Some(0),
        ..BookRequest::default()
    };
    let view = store.load_book(&acme(), &request).await.unwrap();
    assert_eq!((view.version, view.book.entries), (3, 7));
    assert_eq!(view.customers["cus_1"].id, "cus_1");
    let history = view.history.unwrap();
    assert_eq!(history.arr.len(), 1, "{history:?}");
    let version: i64 = relock(&store.writer)
        .pragma_query_value(None, "user_version", |row| row.get(0))
        .unwrap();
    assert_eq!(version, SCHEMA_VERSION);
    // Rewritten by a book step, the JSON records become binary ones
    // that read back the same.
    let mut changes = Changes {
        book: view.book.clone(),
        customers: vec![view.customers["cus_1"].clone()],
        ..Changes::default()
    };
    changes.book.entries = 8;
    let commit = store.commit_book(&acme(), 3, &changes).await.unwrap();
    assert_eq!(commit, Commit::Applied);
    let types: Vec<String> = relock(&store.writer)
        .prepare("SELECT typeof(record) FROM customers UNION ALL SELECT typeof(book) FROM books")
        .unwrap()
        .query_map([], |row| row.get(0))
        .unwrap()
        .collect::<rusqlite::Result<_>>()
        .unwrap();
    assert_eq!(types, ["blob", "blob"]);
    let again = store.load_book(&acme(), &request).await.unwrap();
    assert_eq!((again.version, again.book.entries), (4, 8));
    assert_eq!(again.customers, view.customers);
}

#[test]
fn pending_visitors_count_each_cell_not_only_its_hashes() {
    let mut pending = PendingVisitors {
        cells: CellMap::default(),
        bytes: 0,
        since: std::time::Instant::now(),
    };
    let (partner, campaign): (Arc<str>, Arc<str>) = ("acme".into(), "spring".into());
    let day = NaiveDate::from_ymd_opt(2026, 11, 28).unwrap();
    let mut one = Sketch::default();
    one.add(&VisitorId::random());
    // Ten thousand distinct terms, one visitor each: what a hostile
    // link can bring.
    for term in 0..10_000 {
        let cell = (
            Arc::clone(&partner),
            day,
            Arc::clone(&campaign),
            Some(term.to_string().into()),
        );
        pending.merge(cell, &one);
    }
    assert!(pending.bytes >= 10_000 * (PENDING_CELL_BYTES + one.memory()));
    // The same cells again add no cells, only what their sketches grew.
    let before = pending.bytes;
    let cell = (partner, day, campaign, Some("0".into()));
    pending.merge(cell, &one);
    assert_eq!(pending.bytes, before);
}

#[test]
fn a_multi_row_statement_has_one_group_of_parameters_a_row() {
    let insert = MultiRow::new("INSERT INTO t (a, b)", 2, " RETURNING a");
    assert_eq!(
        insert.sql(1),
        "INSERT INTO t (a, b) VALUES (?, ?) RETURNING a"
    );
    assert_eq!(
        insert.sql(4),
        "INSERT INTO t (a, b) VALUES (?, ?), (?, ?), (?, ?), (?, ?) RETURNING a"
    );
    assert_eq!(
        insert.sql(ROWS_AT_ONCE).matches('?').count(),
        2 * ROWS_AT_ONCE
    );
}

/// A new file gets the larger pages; one made before keeps its own.
#[test]
fn a_new_database_has_eight_kib_pages_and_an_old_one_keeps_its_own() {
    let dir = tempfile::tempdir().unwrap();
    let page_size = |path: &Path| -> i64 {
        Connection::open(path)
            .unwrap()
            .pragma_query_value(None, "page_size", |row| row.get(0))
            .unwrap()
    };
    let new = dir.path().join("new.db");
    drop(SqliteStore::open(&new, Duration::from_secs(60)).unwrap());
    assert_eq!(page_size(&new), PAGE_SIZE);
    let old = dir.path().join("old.db");
    Connection::open(&old)
        .unwrap()
        .execute_batch("PRAGMA page_size = 4096; PRAGMA journal_mode = WAL; CREATE TABLE t (x);")
        .unwrap();
    drop(SqliteStore::open(&old, Duration::from_secs(60)).unwrap());
    assert_eq!(page_size(&old), 4096);
}

#[test]
fn statement_chunks_cover_everything_in_few_sizes() {
    for len in [0, 1, 2, 3, 127, 128, 129, 500, 1_000] {
        let items: Vec<usize> = (0..len).collect();
        let chunks: Vec<&[usize]> = statement_chunks(&items).collect();
        assert_eq!(chunks.concat(), items, "{len} items, in order");
        assert!(chunks
            .iter()
            .all(|c| c.len().is_power_of_two() && c.len() <= ROWS_AT_ONCE));
    }
}

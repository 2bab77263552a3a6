//! The database file: creating it private, configuring connections,
//! migrating the schema, expiring old clicks, online backups.

use super::*;

/// The page size of a new database (one made with another keeps its own).
/// 8 KiB rather than SQLite's default 4 KiB: a click batch appends to the
/// end of its trees, so it writes half as many WAL frames (two system calls
/// each) and splits half as many pages, and the writer's page cache has
/// half as many pages to scan when a commit ends. Measured (`cargo bench
/// --bench store`, `loadtest/events KINDS=0`, three runs each):
///
/// | page | clicks/s | worker events/s | worker CPU µs/event |
/// | --- | --- | --- | --- |
/// | 4 KiB | 223,000-236,000 | 17,200-20,300 | 65.7 |
/// | 8 KiB | 249,000-269,000 | 19,100-20,900 | 63.2 |
/// | 16 KiB | 261,000-274,000 | 15,000-17,400 | 76.1 |
///
/// 16 KiB pages cost the worker, whose commits rewrite pages here and
/// there (books, customers), each written to the WAL whole.
pub(super) const PAGE_SIZE: i64 = 8 << 10;

/// The tables expiry walks by key.
#[derive(Clone, Copy)]
pub(super) enum ExpiringTable {
    ClickBatches,
    VisitorClicks,
}

/// Deletes the expired rows among the next `EXPIRE_AT_ONCE` keys after
/// `from`; answers how many keys it looked at and the last one.
pub(super) fn expire_range(
    conn: &mut Connection,
    table: ExpiringTable,
    from: &[u8],
    horizon: i64,
) -> Result<(usize, Option<Vec<u8>>), StoreError> {
    let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
    let (table, key) = match table {
        ExpiringTable::ClickBatches => {
            let walked = click_log::expire(&tx, from, EXPIRE_AT_ONCE, horizon)?;
            tx.commit()?;
            return Ok(walked);
        }
        // Keyed by visitor, then time: a visitor's rows go together.
        ExpiringTable::VisitorClicks => ("visitor_clicks", "visitor"),
    };
    let range = format!("SELECT {key} FROM {table} WHERE {key} > ?1 ORDER BY {key} LIMIT ?2");
    let (scanned, last): (usize, Option<Vec<u8>>) = tx.query_row(
        &format!("SELECT COUNT(*), MAX({key}) FROM ({range})"),
        params![from, EXPIRE_AT_ONCE],
        |row| Ok((row.get(0)?, row.get(1)?)),
    )?;
    tx.execute(
        &format!("DELETE FROM {table} WHERE {key} IN ({range}) AND at < ?3"),
        params![from, EXPIRE_AT_ONCE, horizon],
    )?;
    tx.commit()?;
    Ok((scanned, last))
}

/// Copies the database at `path` to `dest` while a service may be writing
/// it: SQLite's online backup API, page by page, inside one read
/// transaction on the source, so the copy is the database as of one
/// moment (WAL lets the service go on writing meanwhile) and is never
/// restarted by those writes. The copy is written beside `dest` and
/// renamed into place, mode 0600. `progress` hears (pages copied, pages
/// in all) after each step.
pub fn backup(path: &Path, dest: &Path, mut progress: impl FnMut(u64, u64)) -> Result<(), String> {
    use rusqlite::backup::{Backup, StepResult};
    use rusqlite::OpenFlags;
    let named = |e: &dyn std::fmt::Display| format!("`embedded.path` {}: {e}", path.display());
    let source = Connection::open_with_flags(path, OpenFlags::SQLITE_OPEN_READ_ONLY)
        .map_err(|e| named(&e))?;
    source
        .busy_timeout(Duration::from_secs(30))
        .map_err(|e| named(&e))?;
    source
        .execute_batch("BEGIN; SELECT COUNT(*) FROM sqlite_schema;")
        .map_err(|e| named(&e))?;
    let partial = dest.with_extension("partial");
    let _ = std::fs::remove_file(&partial);
    create_private(&partial).map_err(|e| format!("{}: {e}", partial.display()))?;
    let mut copy = Connection::open(&partial).map_err(|e| format!("{}: {e}", partial.display()))?;
    {
        let backup = Backup::new(&source, &mut copy).map_err(|e| named(&e))?;
        loop {
            let step = backup.step(1024).map_err(|e| named(&e))?;
            let at = backup.progress();
            let all = at.pagecount.max(0) as u64;
            progress(all - at.remaining.max(0) as u64, all);
            match step {
                StepResult::Done => break,
                StepResult::More => {}
                _ => std::thread::sleep(Duration::from_millis(10)),
            }
        }
    }
    source.execute_batch("COMMIT").map_err(|e| named(&e))?;
    // The copy is a plain database file, not left in WAL mode.
    copy.pragma_update(None, "journal_mode", "DELETE")
        .map_err(|e| format!("{}: {e}", partial.display()))?;
    drop(copy);
    std::fs::rename(&partial, dest).map_err(|e| format!("{}: {e}", dest.display()))
}

/// Runs `f` with the connection on the blocking pool.
pub(super) async fn on_blocking_pool<T, F>(
    conn: Arc<Mutex<Connection>>,
    f: F,
) -> Result<T, StoreError>
where
    T: Send + 'static,
    F: FnOnce(&mut Connection) -> Result<T, StoreError> + Send + 'static,
{
    tokio::task::spawn_blocking(move || f(&mut relock(&conn)))
        .await
        .map_err(|e| StoreError::unavailable(format!("sqlite task: {e}")))?
}

/// A panic inside a transaction rolls it back (the transaction is dropped),
/// so a poisoned connection is still consistent and is taken over.
pub(super) fn relock<T>(lock: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    lock.lock().unwrap_or_else(|p| p.into_inner())
}

/// Creates the directory and, if missing, the file readable by its owner
/// only (SQLite gives its `-wal` and `-shm` files the same mode).
pub(super) fn create_private(path: &Path) -> std::io::Result<()> {
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir)?;
    }
    let mut options = std::fs::OpenOptions::new();
    options.read(true).write(true).create(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    options.open(path).map(drop)
}

/// WAL, so readers never block the writer; `synchronous = FULL`, so a
/// commit is on disk when it returns (click batches lower it, see
/// `record_clicks`); a busy timeout for the moments the two connections
/// meet on a checkpoint.
pub(super) fn configure(conn: &Connection, read_only: bool) -> rusqlite::Result<()> {
    conn.busy_timeout(Duration::from_secs(10))?;
    // Room for the click writes' statements of every chunk size, and the rest.
    conn.set_prepared_statement_cache_capacity(64);
    // Takes effect when the file is created (an existing database keeps
    // the page size it was created with).
    conn.pragma_update(None, "page_size", PAGE_SIZE)?;
    conn.pragma_update(None, "journal_mode", "WAL")?;
    conn.pragma_update(None, "synchronous", "FULL")?;
    // 32 MB of page cache a connection (a negative size is in KiB).
    conn.pragma_update(None, "cache_size", -32_000)?;
    // Statement journals (a multi-row upsert's undo within its
    // transaction) in memory: a few pages each, and on disk they were a
    // temporary file written for every click batch.
    conn.pragma_update(None, "temp_store", "MEMORY")?;
    // Checkpoint once the WAL holds about 64 MB rather than 4 MB: a page
    // that many commits rewrite (the end of each tree) is copied back to
    // the database once a checkpoint, so fewer checkpoints copy less.
    // (A checkpointer thread of its own was tried: with the writer always
    // appending, a passive checkpoint never catches up and the WAL grows.)
    conn.pragma_update(None, "wal_autocheckpoint", (64 << 20) / PAGE_SIZE)?;
    if read_only {
        conn.pragma_update(None, "query_only", true)?;
    }
    // Probe that the file is writable now, not at the first request.
    if !read_only {
        conn.execute_batch("BEGIN IMMEDIATE; COMMIT;")?;
    }
    Ok(())
}

pub(super) fn migrate(conn: &mut Connection, from: i64) -> rusqlite::Result<()> {
    let tx = conn.transaction_with_behavior(TransactionBehavior::Exclusive)?;
    for (version, step) in MIGRATIONS.iter().enumerate().skip(from as usize) {
        tx.execute_batch(step.sql)?;
        if let Some(then) = step.then {
            then(&tx)?;
        }
        tx.pragma_update(None, "user_version", version as i64 + 1)?;
    }
    tx.commit()
}

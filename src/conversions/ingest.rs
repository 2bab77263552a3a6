//! `lastclick ingest FILE`: bulk-loads conversion events from JSON Lines
//! through the same validation as `POST /v1/events`, with a progress bar.

use std::io::{BufRead, BufReader};
use std::path::Path;

use indicatif::{ProgressBar, ProgressStyle};
use serde_json::Value;

use crate::conversions::events::{validate_event, Event, MAX_BATCH};
use crate::store::prelude::*;
use crate::store::StoreError;

/// A line that was not queued.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rejected {
    /// 1-based line number in the file.
    pub line: usize,
    pub code: &'static str,
    pub message: String,
}

#[derive(Debug, Default, PartialEq, Eq)]
pub struct Summary {
    pub accepted: usize,
    pub duplicates: usize,
    pub rejected: Vec<Rejected>,
}

#[derive(Debug, thiserror::Error)]
pub enum IngestError {
    #[error("cannot read {path}: {source}")]
    Read {
        path: String,
        source: std::io::Error,
    },
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// Validates every line and queues the valid ones in batches; blank lines
/// are skipped. Invalid lines are reported, not fatal: the rest still goes.
/// Events dated after now plus `clock_skew` are refused, as at the API.
pub async fn ingest(
    store: &dyn Store,
    path: &Path,
    clock_skew: std::time::Duration,
) -> Result<Summary, IngestError> {
    let read_error = |source| IngestError::Read {
        path: path.display().to_string(),
        source,
    };
    let file = std::fs::File::open(path).map_err(read_error)?;
    let size = file.metadata().map(|m| m.len()).unwrap_or(0);
    let progress = ProgressBar::new(size).with_style(
        ProgressStyle::with_template("{bar:40} {bytes}/{total_bytes} {msg}")
            .expect("a valid template"),
    );
    let mut reader = BufReader::new(progress.wrap_read(file));
    let mut summary = Summary::default();
    let mut batch: Vec<Event> = Vec::with_capacity(MAX_BATCH);
    let mut line = String::new();
    let mut number = 0;
    loop {
        line.clear();
        if reader.read_line(&mut line).map_err(read_error)? == 0 {
            break;
        }
        number += 1;
        if line.trim().is_empty() {
            continue;
        }
        let latest = chrono::Utc::now() + clock_skew;
        match parse_line(&line, latest) {
            Ok(event) => batch.push(event),
            Err((code, message)) => summary.rejected.push(Rejected {
                line: number,
                code,
                message,
            }),
        }
        if batch.len() == MAX_BATCH {
            queue(store, &mut batch, &mut summary).await?;
            progress.set_message(format!("{} accepted", summary.accepted));
        }
    }
    queue(store, &mut batch, &mut summary).await?;
    progress.finish_and_clear();
    Ok(summary)
}

fn parse_line(
    line: &str,
    latest: chrono::DateTime<chrono::Utc>,
) -> Result<Event, (&'static str, String)> {
    let value: Value = serde_json::from_str(line)
        .map_err(|e| ("malformed_json", format!("malformed JSON: {e}")))?;
    crate::json::refuse_repeated_keys(line.as_bytes())
        .map_err(|e| ("duplicate_key", e.to_string()))?;
    validate_event(&value, latest)
}

async fn queue(
    store: &dyn Store,
    batch: &mut Vec<Event>,
    summary: &mut Summary,
) -> Result<(), IngestError> {
    if batch.is_empty() {
        return Ok(());
    }
    let enqueued = store.enqueue_events(batch).await?;
    summary.accepted += enqueued.accepted;
    summary.duplicates += enqueued.duplicates;
    batch.clear();
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::time::Duration;

    use super::*;
    use crate::store::sqlite::SqliteStore;

    #[tokio::test]
    async fn valid_lines_are_queued_and_bad_ones_reported_by_line() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("events.jsonl");
        let good =
            r#"{"id": "e1", "type": "cancel", "customer": "c", "at": "2026-11-22T10:00:00Z"}"#;
        let text = format!(
            "{good}\n\n{{not json\n{}\n{good}\n",
            r#"{"id": "e2", "type": "payment", "customer": "c", "at": "2026-11-22T10:00:00Z", "amount": "1.001", "currency": "USD", "period": "month"}"#
        );
        std::fs::write(&path, &text).unwrap();
        let store =
            Arc::new(SqliteStore::open(&dir.path().join("db"), Duration::from_secs(60)).unwrap());
        let summary = ingest(store.as_ref(), &path, Duration::from_secs(300))
            .await
            .unwrap();
        assert_eq!((summary.accepted, summary.duplicates), (1, 1));
        let rejected: Vec<(usize, &str)> =
            summary.rejected.iter().map(|r| (r.line, r.code)).collect();
        assert_eq!(rejected, [(3, "malformed_json"), (4, "invalid_amount")]);
        assert!(matches!(
            ingest(
                store.as_ref(),
                &dir.path().join("missing"),
                Duration::from_secs(300)
            )
            .await,
            Err(IngestError::Read { .. })
        ));
    }
}

//! Documents a server refused for a reason that may pass (not primary, a write conflict, a 5xx
//! on one row): written again, as upserts, as often as the retry policy allows — by the stage's
//! writer and by the rows set aside that are written again at its end.

use bson::RawDocumentBuf;

use crate::monitor::EntityCounters;
use crate::sink::mongodb::BatchResult;
use crate::sink::retry::RetryPolicy;
use crate::sink::target::SinkError;

/// Writes again, as upserts, the documents of `docs` that `r` says the server may take on
/// another try (not primary, a write conflict…), as often as the retry policy allows.
pub(super) async fn retry_transient<W, F>(
    write: W,
    collection: &str,
    docs: &[RawDocumentBuf],
    mut r: BatchResult,
    policy: RetryPolicy,
    counters: &EntityCounters,
) -> BatchResult
where
    W: Fn(Vec<RawDocumentBuf>) -> F,
    F: std::future::Future<Output = Result<BatchResult, SinkError>>,
{
    for attempt in 0..policy.max_retries {
        let idx: Vec<usize> = r
            .errors
            .iter()
            .filter(|e| e.transient && e.index < docs.len())
            .map(|e| e.index)
            .collect();
        if idx.is_empty() {
            break;
        }
        EntityCounters::add(&counters.retried, 1);
        tracing::warn!(
            collection,
            documents = idx.len(),
            attempt,
            "writing refused documents again"
        );
        tokio::time::sleep(policy.delay(attempt, fastrand::f64())).await;
        let again: Vec<RawDocumentBuf> = idx.iter().map(|&i| docs[i].clone()).collect();
        if let Ok(sub) = write(again).await {
            r.errors.retain(|e| !(e.transient && e.index < docs.len()));
            r.written += sub.written;
            for mut e in sub.errors {
                e.index = idx.get(e.index).copied().unwrap_or(usize::MAX);
                r.errors.push(e);
            }
            r.errors.sort_by_key(|e| e.index);
        }
    }
    r
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sink::mongodb::DocError;
    use std::sync::atomic::Ordering;

    fn fast(max_retries: u32) -> RetryPolicy {
        RetryPolicy {
            max_retries,
            base: std::time::Duration::from_millis(1),
            max_delay: std::time::Duration::from_millis(2),
        }
    }

    fn doc_error(index: usize, transient: bool) -> DocError {
        DocError {
            index,
            code: if transient { 112 } else { 11000 },
            code_name: if transient {
                "WriteConflict"
            } else {
                "DuplicateKey"
            }
            .into(),
            message: String::new(),
            transient,
        }
    }

    #[tokio::test]
    async fn transient_document_errors_are_written_again_and_permanent_ones_stay() {
        let docs: Vec<RawDocumentBuf> = (0..5)
            .map(|i| {
                let mut d = RawDocumentBuf::new();
                d.append("_id", i);
                d
            })
            .collect();
        // Docs 1 and 3 hit a write conflict, doc 4 a duplicate key.
        let first = BatchResult {
            written: 2,
            errors: vec![doc_error(1, true), doc_error(3, true), doc_error(4, false)],
            ..Default::default()
        };
        let calls = std::sync::Mutex::new(Vec::new());
        let counters = EntityCounters::default();
        let r = retry_transient(
            |again: Vec<RawDocumentBuf>| {
                let ids: Vec<i32> = again.iter().map(|d| d.get_i32("_id").unwrap()).collect();
                let n = {
                    let mut c = calls.lock().unwrap();
                    c.push(ids.clone());
                    c.len()
                };
                async move {
                    // The first retry still conflicts on its second document (doc 3).
                    Ok(if n == 1 {
                        BatchResult {
                            written: 1,
                            errors: vec![doc_error(1, true)],
                            ..Default::default()
                        }
                    } else {
                        BatchResult {
                            written: ids.len() as u64,
                            errors: Vec::new(),
                            ..Default::default()
                        }
                    })
                }
            },
            "c",
            &docs,
            first,
            fast(5),
            &counters,
        )
        .await;
        assert_eq!(*calls.lock().unwrap(), vec![vec![1, 3], vec![3]]);
        assert_eq!(r.written, 4);
        assert_eq!(r.errors.len(), 1);
        assert_eq!((r.errors[0].index, r.errors[0].transient), (4, false));
        assert_eq!(counters.retried.load(Ordering::Relaxed), 2);
    }

    #[tokio::test]
    async fn documents_still_refused_after_the_retries_stay_transient() {
        let mut d = RawDocumentBuf::new();
        d.append("_id", 1);
        let policy = fast(3);
        let counters = EntityCounters::default();
        let r = retry_transient(
            |_again: Vec<RawDocumentBuf>| async {
                Ok(BatchResult {
                    written: 0,
                    errors: vec![doc_error(0, true)],
                    ..Default::default()
                })
            },
            "c",
            std::slice::from_ref(&d),
            BatchResult {
                written: 0,
                errors: vec![doc_error(0, true)],
                ..Default::default()
            },
            policy,
            &counters,
        )
        .await;
        assert_eq!(r.written, 0);
        assert!(
            r.errors[0].transient,
            "left for the caller to count as failed"
        );
        assert_eq!(counters.retried.load(Ordering::Relaxed), 3);
    }
}

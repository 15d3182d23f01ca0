//! The counters of the entities of the runs going on in this process, by run id: what
//! `cutover serve` shows live of a run it started when the ledger has nothing of it (a dry run
//! records nothing there: adv37 F2, its entities were `[]` until it ended).

use std::collections::HashMap;
use std::sync::{Arc, LazyLock, Mutex};
use std::time::Instant;

use super::{Counts, EntityCounters};

struct Entry {
    entity: String,
    counters: Arc<EntityCounters>,
    total: u64,
    started: Instant,
}

static RUNS: LazyLock<Mutex<HashMap<String, Vec<Entry>>>> =
    LazyLock::new(|| Mutex::new(HashMap::new()));

/// One entity of a run as it goes.
#[derive(Debug, Clone, PartialEq)]
pub struct LiveEntity {
    pub entity: String,
    pub counts: Counts,
    /// Source rows of the entity (its count when the stage began).
    pub total: u64,
    pub elapsed_ms: u64,
}

/// Notes that run `run_id`'s stage of `entity` counts into `counters` (`total` rows to read).
pub fn publish(run_id: &str, entity: &str, counters: Arc<EntityCounters>, total: u64) {
    let mut runs = RUNS.lock().unwrap_or_else(|p| p.into_inner());
    let entries = runs.entry(run_id.to_string()).or_default();
    entries.retain(|e| e.entity != entity);
    entries.push(Entry {
        entity: entity.to_string(),
        counters,
        total,
        started: Instant::now(),
    });
}

/// The entities of run `run_id` so far, in the order they began (none for a run not going on
/// in this process).
pub fn entities(run_id: &str) -> Vec<LiveEntity> {
    let runs = RUNS.lock().unwrap_or_else(|p| p.into_inner());
    runs.get(run_id)
        .map(|entries| {
            entries
                .iter()
                .map(|e| LiveEntity {
                    entity: e.entity.clone(),
                    counts: e.counters.snapshot(),
                    total: e.total,
                    elapsed_ms: e.started.elapsed().as_millis() as u64,
                })
                .collect()
        })
        .unwrap_or_default()
}

/// Forgets run `run_id` (it ended: its report counts it).
pub fn forget(run_id: &str) {
    RUNS.lock()
        .unwrap_or_else(|p| p.into_inner())
        .remove(run_id);
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::Ordering;

    #[test]
    fn a_published_entity_is_seen_as_it_counts_until_its_run_is_forgotten() {
        let c = Arc::new(EntityCounters::default());
        publish("r-live-1", "patients", c.clone(), 10);
        c.read.fetch_add(4, Ordering::Relaxed);
        c.written.fetch_add(3, Ordering::Relaxed);
        let seen = entities("r-live-1");
        assert_eq!(seen.len(), 1);
        assert_eq!(
            (
                seen[0].entity.as_str(),
                seen[0].counts.read,
                seen[0].counts.written,
                seen[0].total
            ),
            ("patients", 4, 3, 10)
        );
        assert!(entities("r-live-other").is_empty());
        forget("r-live-1");
        assert!(entities("r-live-1").is_empty());
    }
}

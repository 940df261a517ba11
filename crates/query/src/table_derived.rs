//! A value computed from one table (the hierarchy from `entity_changes`, `twin_history` from
//! `twin_changes`), kept until the table changes and computed by one query at a time.

use std::sync::{Arc, RwLock};

use tokio::sync::OwnedMutexGuard;
use twinlake_model::Table;
use twinlake_store::LiveTables;

#[derive(Debug)]
pub(crate) struct TableDerived<T> {
    table: Table,
    live: Arc<LiveTables>,
    /// The last value and the table's state (`LiveTables::changes`) it was computed from.
    latest: RwLock<(Option<u64>, Arc<T>)>,
    computing: Arc<tokio::sync::Mutex<()>>,
}

impl<T> TableDerived<T> {
    /// `initial` stands for the value until the first computation publishes one.
    pub(crate) fn new(table: Table, live: Arc<LiveTables>, initial: T) -> Self {
        Self {
            table,
            live,
            latest: RwLock::new((None, Arc::new(initial))),
            computing: Arc::default(),
        }
    }

    /// The last value published, whatever the table holds now.
    pub(crate) fn latest(&self) -> Option<Arc<T>> {
        self.latest.read().ok().map(|latest| Arc::clone(&latest.1))
    }

    /// The last value published, if the table has not changed since.
    pub(crate) fn current(&self) -> Option<Arc<T>> {
        let latest = self.latest.read().ok()?;
        (latest.0 == Some(self.changes())).then(|| Arc::clone(&latest.1))
    }

    /// The table's state now, to publish what is computed from it with.
    pub(crate) fn changes(&self) -> u64 {
        self.live.changes(self.table)
    }

    /// Waits for any computation under way; while the guard is held, others wait for this
    /// one (check [`Self::current`] again once it is yours).
    pub(crate) async fn computing(&self) -> OwnedMutexGuard<()> {
        Arc::clone(&self.computing).lock_owned().await
    }

    pub(crate) fn publish(&self, changes: u64, value: Arc<T>) {
        if let Ok(mut latest) = self.latest.write() {
            *latest = (Some(changes), value);
        }
    }
}

//! The lake: one Delta Lake table per Twinlake table under one root URL, on a local directory
//! or S3, plus the durable entity ids of the pruning index.

use std::collections::HashMap;
use std::sync::Arc;

use deltalake::DeltaTable;
use deltalake::kernel::transaction::{CommitBuilder, CommitProperties};
use deltalake::kernel::{Action, Add, DataType as DeltaType, Remove, StructField, Transaction};
use deltalake::protocol::{DeltaOperation, SaveMode};
use object_store::path::Path;
use object_store::prefix::PrefixStore;
use object_store::{ObjectStore, ObjectStoreExt, PutMode, PutOptions, PutPayload};
use tokio::sync::Mutex;
use twinlake_model::{ColumnType, Table};
use url::Url;

use crate::StoreError;
use crate::file::{CommittedFiles, PersistedFile, decode_path};

/// The Delta application id under which each commit records the last WAL record it holds.
pub(crate) const WAL_APP_ID: &str = "twinlake-wal";

/// The Delta partition column: the UTC date of the row's time.
pub const DATE_COLUMN: &str = "date";

/// Where the lake is and how to reach it.
#[derive(Debug, Clone)]
pub struct LakeConfig {
    /// `file:///path` or `s3://bucket/prefix`.
    pub url: Url,
    /// object_store / deltalake options, e.g. `aws_endpoint`, `aws_region`, `aws_allow_http`,
    /// `aws_access_key_id`; the usual `AWS_*` environment variables apply too.
    pub storage_options: HashMap<String, String>,
}

impl LakeConfig {
    /// A lake in a local directory (created if missing).
    pub fn local(dir: &std::path::Path) -> Result<Self, StoreError> {
        std::fs::create_dir_all(dir).map_err(|source| StoreError::Io {
            path: dir.to_owned(),
            source,
        })?;
        let dir = dir.canonicalize().map_err(|source| StoreError::Io {
            path: dir.to_owned(),
            source,
        })?;
        let url = Url::from_directory_path(&dir)
            .map_err(|()| StoreError::Config(format!("{} is not a usable path", dir.display())))?;
        Ok(Self {
            url,
            storage_options: HashMap::new(),
        })
    }

    fn is_s3(&self) -> bool {
        self.url.scheme() == "s3"
    }

    fn table_url(&self, name: &str) -> Result<Url, StoreError> {
        let mut base = self.url.clone();
        if !base.path().ends_with('/') {
            base.set_path(&format!("{}/", base.path()));
        }
        base.join(&format!("{name}/"))
            .map_err(|e| StoreError::Config(format!("table URL for {name}: {e}")))
    }
}

/// One Delta table and the commits made to it, one at a time.
#[derive(Debug)]
pub(crate) struct LakeTable {
    pub(crate) name: &'static str,
    pub(crate) delta: Mutex<DeltaTable>,
}

/// Every Delta table of Twinlake and the object store they live in.
#[derive(Debug)]
pub struct Lake {
    config: LakeConfig,
    /// The store rooted at the lake's URL: paths are `<table>/date=…/part-….parquet`.
    store: Arc<dyn ObjectStore>,
    tables: Vec<LakeTable>,
    pub(crate) entity_ids: LakeTable,
}

impl Lake {
    /// Opens the lake, creating missing tables. Refuses a store that does not honour
    /// conditional writes: two writers could both think they committed a version. (deltalake
    /// 1.x dropped its DynamoDB log store, so there is no locking provider to fall back on.)
    pub async fn open(config: LakeConfig) -> Result<Self, StoreError> {
        deltalake::aws::register_handlers(None);
        let store = open_object_store(&config)?;
        check_conditional_put(store.as_ref(), &config.url).await?;
        let mut tables = Vec::new();
        for table in Table::ALL {
            let columns = table_columns(table);
            tables.push(open_table(&config, table.name(), columns, true).await?);
        }
        let entity_ids = open_table(
            &config,
            crate::entity_ids::TABLE_NAME,
            crate::entity_ids::columns(),
            false,
        )
        .await?;
        Ok(Self {
            config,
            store,
            tables,
            entity_ids,
        })
    }

    pub fn url(&self) -> &Url {
        &self.config.url
    }

    /// The object store at the lake's root, for readers of the files.
    pub fn store(&self) -> Arc<dyn ObjectStore> {
        Arc::clone(&self.store)
    }

    pub(crate) fn table(&self, table: Table) -> &LakeTable {
        &self.tables[table as usize]
    }

    /// The files of the table's current version.
    pub async fn files(&self, table: Table) -> Result<CommittedFiles, StoreError> {
        let lake_table = self.table(table);
        let delta = lake_table.delta.lock().await;
        files_of(&delta, lake_table.name)
    }

    /// The last WAL record whose rows of `table` are committed, if any.
    pub async fn persisted_through(&self, table: Table) -> Result<Option<u64>, StoreError> {
        let delta = self.table(table).delta.lock().await;
        let version = delta
            .snapshot()?
            .transaction_version(delta.log_store().as_ref(), WAL_APP_ID)
            .await?;
        Ok(version.and_then(|v| u64::try_from(v).ok()))
    }

    /// Writes a file's bytes at `path` (relative to the lake root).
    pub(crate) async fn put(&self, path: &str, bytes: bytes::Bytes) -> Result<(), StoreError> {
        self.store
            .put(&Path::from(path), PutPayload::from_bytes(bytes))
            .await?;
        Ok(())
    }

    /// Makes every file upload wait `wait` first, as over a slow link to the store.
    #[cfg(test)]
    pub(crate) fn slow_uploads(&mut self, wait: std::time::Duration) {
        let config = object_store::throttle::ThrottleConfig {
            wait_put_per_call: wait,
            ..Default::default()
        };
        let store = Arc::clone(&self.store);
        self.store = Arc::new(object_store::throttle::ThrottledStore::new(store, config));
    }

    /// Deletes a file that was written but could not be committed.
    pub(crate) async fn delete_uncommitted(&self, path: &str) {
        if let Err(error) = self.store.delete(&Path::from(path)).await {
            tracing::debug!(%error, path, "uncommitted file left for vacuum");
        }
    }
}

/// Why a commit did not happen, or may not have.
#[derive(Debug)]
pub(crate) enum CommitFailure {
    /// No log entry was written: no version references the commit's files.
    NotCommitted(StoreError),
    /// Writing the log entry failed in a way that may still have reached the store (a timeout,
    /// a cut connection), and reading the log back did not tell: the files must stay.
    Unknown(StoreError),
}

impl From<CommitFailure> for StoreError {
    fn from(failure: CommitFailure) -> Self {
        match failure {
            CommitFailure::NotCommitted(error) | CommitFailure::Unknown(error) => error,
        }
    }
}

/// Commits actions to a table and returns its files afterwards. `through` records the last
/// WAL record held, atomically with the files.
///
/// A commit is the write of its log entry, `_delta_log/<version>.json`: once that is written,
/// this returns the files even if a step after it (snapshot update, checkpoint, log cleanup)
/// fails, because the caller must never delete a file a committed version references.
pub(crate) async fn commit(
    lake_table: &LakeTable,
    delta: &mut DeltaTable,
    actions: Vec<Action>,
    operation: DeltaOperation,
    through: Option<u64>,
) -> Result<CommittedFiles, CommitFailure> {
    use CommitFailure::NotCommitted;
    let mut properties = CommitProperties::default();
    if let Some(through) = through {
        let version = i64::try_from(through)
            .map_err(|_| NotCommitted(StoreError::Config("WAL record id beyond i64".to_owned())))?;
        properties = properties.with_application_transaction(Transaction::new(WAL_APP_ID, version));
    }
    let before = files_of(delta, lake_table.name).map_err(NotCommitted)?;
    let snapshot = delta.snapshot().map_err(|e| NotCommitted(e.into()))?;
    let prepared = CommitBuilder::from(properties)
        .with_actions(actions.clone())
        .build(Some(snapshot), delta.log_store(), operation)
        .into_prepared_commit_future()
        .await
        .map_err(|e| NotCommitted(e.into()))?;
    let written = match prepared.await {
        Ok(written) => written,
        Err(error) => {
            return resolve_failed_commit(lake_table, delta, &actions, error.into()).await;
        }
    };
    let version = written.version;
    if let Err(error) = written.await {
        tracing::warn!(table = lake_table.name, version, %error, "a step after the commit failed (checkpoint or log cleanup); the commit stands");
    }
    if let Err(error) = delta.update_incremental(None).await {
        tracing::warn!(table = lake_table.name, version, %error, "reading the table after its commit failed; its files follow from the commit itself");
        return Ok(apply_actions(before, &actions, lake_table.name, version));
    }
    files_of(delta, lake_table.name).or_else(|error| {
        tracing::warn!(table = lake_table.name, version, %error, "listing the table after its commit failed; its files follow from the commit itself");
        Ok(apply_actions(before, &actions, lake_table.name, version))
    })
}

/// After a failed log write: reads the log to learn whether the entry landed anyway (a PUT that
/// timed out may have), which the first added file tells, since each file's name is unique.
async fn resolve_failed_commit(
    lake_table: &LakeTable,
    delta: &mut DeltaTable,
    actions: &[Action],
    error: StoreError,
) -> Result<CommittedFiles, CommitFailure> {
    let Some(added) = actions.iter().find_map(|action| match action {
        Action::Add(add) => Some(format!("{}/{}", lake_table.name, decode_path(&add.path))),
        _ => None,
    }) else {
        // Nothing was uploaded for it, so nothing can be deleted by mistake either way.
        return Err(CommitFailure::NotCommitted(error));
    };
    if let Err(read) = delta.update_incremental(None).await {
        tracing::warn!(table = lake_table.name, %error, %read, "a commit failed and the log cannot be read: whether it landed is unknown, so its files stay");
        return Err(CommitFailure::Unknown(error));
    }
    match files_of(delta, lake_table.name) {
        Ok(now) if now.files.iter().any(|file| file.path == added) => {
            tracing::warn!(table = lake_table.name, version = now.version, %error, "the commit's log write reported an error but landed");
            Ok(now)
        }
        Ok(_) => Err(CommitFailure::NotCommitted(error)),
        Err(read) => {
            tracing::warn!(table = lake_table.name, %error, %read, "a commit failed and the log cannot be read: whether it landed is unknown, so its files stay");
            Err(CommitFailure::Unknown(error))
        }
    }
}

/// The files after a commit of `actions` on top of `before`, for when the table cannot be read
/// back: Twinlake is the table's only writer, so no other commit came between.
fn apply_actions(
    before: CommittedFiles,
    actions: &[Action],
    table_name: &str,
    version: u64,
) -> CommittedFiles {
    let removed: Vec<String> = actions
        .iter()
        .filter_map(|action| match action {
            Action::Remove(remove) => Some(format!("{table_name}/{}", decode_path(&remove.path))),
            _ => None,
        })
        .collect();
    let mut files: Vec<PersistedFile> = before
        .files
        .into_iter()
        .filter(|file| !removed.contains(&file.path))
        .collect();
    for action in actions {
        if let Action::Add(add) = action {
            match PersistedFile::from_add(table_name, add) {
                Ok(file) => files.push(file),
                Err(error) => {
                    tracing::error!(table = table_name, %error, "a committed file could not be read back")
                }
            }
        }
    }
    CommittedFiles {
        version: i64::try_from(version).unwrap_or(i64::MAX),
        files,
    }
}

/// A file's path in its table's log (relative to the table) and its partition values.
fn log_entry(file: &PersistedFile, table_name: &str) -> (String, HashMap<String, Option<String>>) {
    let relative = file
        .path
        .strip_prefix(&format!("{table_name}/"))
        .unwrap_or(&file.path)
        .to_owned();
    let partition = HashMap::from([(DATE_COLUMN.to_owned(), Some(file.date.clone()))]);
    (relative, partition)
}

pub(crate) fn add_action(file: &PersistedFile, table_name: &str, stats: String) -> Action {
    let (path, partition_values) = log_entry(file, table_name);
    Action::Add(Add {
        path,
        partition_values,
        size: file.size as i64,
        modification_time: chrono::Utc::now().timestamp_millis(),
        data_change: true,
        stats: Some(stats),
        tags: Some(file.tags()),
        deletion_vector: None,
        base_row_id: None,
        default_row_commit_version: None,
        clustering_provider: None,
    })
}

pub(crate) fn remove_action(file: &PersistedFile, table_name: &str, data_change: bool) -> Action {
    let (path, partition_values) = log_entry(file, table_name);
    Action::Remove(Remove {
        path,
        data_change,
        deletion_timestamp: Some(chrono::Utc::now().timestamp_millis()),
        extended_file_metadata: Some(true),
        size: Some(file.size as i64),
        partition_values: Some(partition_values),
        deletion_vector: None,
        tags: None,
        base_row_id: None,
        default_row_commit_version: None,
    })
}

pub(crate) fn write_operation() -> DeltaOperation {
    DeltaOperation::Write {
        mode: SaveMode::Append,
        partition_by: Some(vec![DATE_COLUMN.to_owned()]),
        predicate: None,
    }
}

pub(crate) fn write_operation_unpartitioned() -> DeltaOperation {
    DeltaOperation::Write {
        mode: SaveMode::Append,
        partition_by: None,
        predicate: None,
    }
}

#[allow(deprecated)] // `add_action` is the one accessor that gives a file's tags
fn files_of(delta: &DeltaTable, table_name: &str) -> Result<CommittedFiles, StoreError> {
    let Ok(state) = delta.snapshot() else {
        return Ok(CommittedFiles {
            version: -1,
            files: Vec::new(),
        });
    };
    let files = state
        .log_data()
        .iter()
        .map(|view| PersistedFile::from_add(table_name, &view.add_action()))
        .collect::<Result<_, _>>()?;
    Ok(CommittedFiles {
        version: i64::try_from(state.version()).unwrap_or(i64::MAX),
        files,
    })
}

async fn open_table(
    config: &LakeConfig,
    name: &'static str,
    columns: Vec<StructField>,
    partitioned: bool,
) -> Result<LakeTable, StoreError> {
    let url = config.table_url(name)?;
    if url.scheme() == "file"
        && let Ok(path) = url.to_file_path()
    {
        std::fs::create_dir_all(&path).map_err(|source| StoreError::Io { path, source })?;
    }
    let mut delta =
        DeltaTable::try_from_url_with_storage_options(url, config.storage_options.clone()).await?;
    if delta.version().is_none() {
        let mut create = delta
            .create()
            .with_table_name(name)
            .with_columns(columns.clone())
            .with_save_mode(SaveMode::Ignore);
        if partitioned {
            create = create.with_partition_columns([DATE_COLUMN]);
        }
        delta = create.await?;
        tracing::info!(table = name, "created Delta table");
    }
    check_columns(&delta, name, &columns)?;
    Ok(LakeTable {
        name,
        delta: Mutex::new(delta),
    })
}

/// Refuses a table written with other columns (by another version of Twinlake) rather than
/// misread it: before the fleet model, `entity` held the bare topic id and there was no
/// `gateway`, so old rows would be taken for entities of no gateway.
fn check_columns(
    delta: &DeltaTable,
    name: &str,
    expected: &[StructField],
) -> Result<(), StoreError> {
    let schema = delta.snapshot()?.schema();
    let found: Vec<&str> = schema.fields().map(|field| field.name().as_str()).collect();
    let wanted: Vec<&str> = expected.iter().map(|field| field.name().as_str()).collect();
    if found == wanted {
        return Ok(());
    }
    Err(StoreError::IncompatibleTable {
        table: name.to_owned(),
        found: found.join(", "),
        expected: wanted.join(", "),
    })
}

/// The Delta columns of a table: its columns (times as Delta `timestamp`, microseconds, which
/// every Delta reader understands) and the `date` partition column.
fn table_columns(table: Table) -> Vec<StructField> {
    let mut columns: Vec<StructField> = table
        .columns()
        .iter()
        .map(|column| {
            let data_type = match column.column_type {
                ColumnType::Time => DeltaType::TIMESTAMP,
                ColumnType::Text | ColumnType::Json => DeltaType::STRING,
                ColumnType::Float => DeltaType::DOUBLE,
                ColumnType::Integer => DeltaType::LONG,
                ColumnType::Bytes => DeltaType::BINARY,
            };
            StructField::new(column.name, data_type, column.nullable)
        })
        .collect();
    columns.push(StructField::new(DATE_COLUMN, DeltaType::DATE, false));
    columns
}

/// The object store at `config`'s URL (a local directory, created if missing, or an S3 prefix):
/// the lake's, or an export's destination with the lake's S3 settings.
pub fn open_object_store(config: &LakeConfig) -> Result<Arc<dyn ObjectStore>, StoreError> {
    match config.url.scheme() {
        "file" => {
            let path = config
                .url
                .to_file_path()
                .map_err(|()| StoreError::Config(format!("not a local path: {}", config.url)))?;
            std::fs::create_dir_all(&path).map_err(|source| StoreError::Io {
                path: path.clone(),
                source,
            })?;
            Ok(Arc::new(
                object_store::local::LocalFileSystem::new_with_prefix(&path)?,
            ))
        }
        "s3" => {
            let mut builder =
                object_store::aws::AmazonS3Builder::from_env().with_url(config.url.as_str());
            for (key, value) in &config.storage_options {
                if let Ok(key) = key.to_ascii_lowercase().parse() {
                    builder = builder.with_config(key, value);
                }
            }
            let s3 = builder.build()?;
            let prefix = config.url.path().trim_matches('/');
            if prefix.is_empty() {
                Ok(Arc::new(s3))
            } else {
                Ok(Arc::new(PrefixStore::new(s3, prefix)))
            }
        }
        other => Err(StoreError::Config(format!(
            "unsupported store URL scheme {other}: use file:///path or s3://bucket/prefix"
        ))),
    }
}

/// Writes a probe object twice with "create only": the second write must fail. A store that
/// overwrites instead would let two commits claim the same Delta version.
async fn check_conditional_put(store: &dyn ObjectStore, url: &Url) -> Result<(), StoreError> {
    let probe = Path::from(format!(
        "_twinlake/conditional-put-probe-{}",
        std::process::id()
    ));
    let create = || PutOptions {
        mode: PutMode::Create,
        ..PutOptions::default()
    };
    let _ = store.delete(&probe).await;
    store
        .put_opts(&probe, PutPayload::from_static(b"1"), create())
        .await?;
    let second = store
        .put_opts(&probe, PutPayload::from_static(b"2"), create())
        .await;
    let _ = store.delete(&probe).await;
    match second {
        Err(object_store::Error::AlreadyExists { .. }) => Ok(()),
        Err(error) => Err(error.into()),
        Ok(_) => Err(StoreError::NoConditionalPut(url.to_string())),
    }
}

impl LakeConfig {
    /// For logs: the URL without credentials.
    pub fn describe(&self) -> String {
        let kind = if self.is_s3() { "S3" } else { "local" };
        format!("{kind} lake at {}", self.url)
    }
}

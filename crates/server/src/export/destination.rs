//! Where an export goes: a directory of the server's machine or an S3 prefix (with the lake's
//! S3 settings), never inside the lake, and never over files that are not an earlier export.

use std::path::{Path as FsPath, PathBuf};
use std::sync::{Arc, OnceLock};

use futures::TryStreamExt;
use object_store::path::Path;
use object_store::{ObjectStore, ObjectStoreExt, PutPayload};
use twinlake_store::{LakeConfig, open_object_store};
use url::Url;

use super::{ExportError, ExportSettings};

/// Written first: marks the directory as an export's, so `--overwrite` may replace it.
pub(crate) const MARKER: &str = "_twinlake_export.json";
/// Written last: a dataset without it is incomplete.
pub(crate) const MANIFEST: &str = "_manifest.json";

#[derive(Debug)]
pub(crate) struct Destination {
    url: Url,
    /// `--out` as given, for messages.
    shown: String,
    config: LakeConfig,
    /// Opened by `prepare` (which creates a local directory): nothing is created before.
    store: OnceLock<Arc<dyn ObjectStore>>,
}

impl Destination {
    /// Checks `out` against the settings, without writing anything.
    pub(crate) fn open(out: &str, settings: &ExportSettings) -> Result<Self, ExportError> {
        let url = destination_url(out, settings)?;
        let lake = settings.lake.url.as_str().trim_end_matches('/');
        let target = url.as_str().trim_end_matches('/');
        let inside =
            |outer: &str, inner: &str| inner == outer || inner.starts_with(&format!("{outer}/"));
        if inside(lake, target) || inside(target, lake) {
            return Err(ExportError::Invalid(format!(
                "--out {out}: the lake is at {lake}; an export must go elsewhere"
            )));
        }
        let config = LakeConfig {
            url: url.clone(),
            storage_options: settings.s3_options.clone(),
        };
        Ok(Self {
            url,
            shown: out.trim_end_matches('/').to_owned(),
            config,
            store: OnceLock::new(),
        })
    }

    pub(crate) fn url(&self) -> &Url {
        &self.url
    }

    pub(crate) fn store(&self) -> Result<&Arc<dyn ObjectStore>, ExportError> {
        if let Some(store) = self.store.get() {
            return Ok(store);
        }
        let store = open_object_store(&self.config)
            .map_err(|e| ExportError::Destination(format!("--out {}: {e}", self.shown)))?;
        Ok(self.store.get_or_init(|| store))
    }

    /// Makes the destination ready for a new export: empty, or (with `overwrite`) an earlier
    /// export's, whose manifest goes first so that it is visibly incomplete from then on, then
    /// its files. Writes the marker with `request`.
    pub(crate) async fn prepare(
        &self,
        overwrite: bool,
        request: Vec<u8>,
    ) -> Result<(), ExportError> {
        let existing: Vec<Path> = self
            .store()?
            .list(None)
            .map_ok(|meta| meta.location)
            .try_collect()
            .await
            .map_err(|e| self.failure("listing", e))?;
        if !existing.is_empty() {
            if !overwrite {
                return Err(ExportError::Invalid(format!(
                    "{} is not empty: pass --overwrite to replace the export there, or choose \
                     another --out",
                    self.shown
                )));
            }
            let ours = existing
                .iter()
                .any(|p| p.as_ref() == MARKER || p.as_ref() == MANIFEST);
            if !ours {
                return Err(ExportError::Invalid(format!(
                    "{} holds files that are not a Twinlake export: --overwrite replaces only an \
                     export, choose another --out",
                    self.shown
                )));
            }
            self.delete(&Path::from(MANIFEST)).await?;
            for path in existing.iter().filter(|p| p.as_ref() != MANIFEST) {
                self.delete(path).await?;
            }
        }
        self.put(MARKER, request).await
    }

    pub(crate) async fn put(&self, path: &str, bytes: Vec<u8>) -> Result<(), ExportError> {
        self.store()?
            .put(&Path::from(path), PutPayload::from(bytes))
            .await
            .map(|_| ())
            .map_err(|e| self.failure(&format!("writing {path}"), e))
    }

    pub(crate) async fn delete(&self, path: &Path) -> Result<(), ExportError> {
        match self.store()?.delete(path).await {
            Ok(()) | Err(object_store::Error::NotFound { .. }) => Ok(()),
            Err(e) => Err(self.failure(&format!("deleting {path}"), e)),
        }
    }

    fn failure(&self, doing: &str, e: object_store::Error) -> ExportError {
        ExportError::Destination(format!("{doing} at {}: {e}", self.shown))
    }
}

fn destination_url(out: &str, settings: &ExportSettings) -> Result<Url, ExportError> {
    if out.starts_with("s3://") {
        let url = Url::parse(out).map_err(|e| ExportError::Invalid(format!("--out {out}: {e}")))?;
        if url.host_str().is_none_or(str::is_empty) {
            return Err(ExportError::Invalid(format!("--out {out}: name a bucket")));
        }
        return Ok(url);
    }
    if out.contains("://") {
        return Err(ExportError::Invalid(format!(
            "--out {out}: a directory or s3://bucket/prefix"
        )));
    }
    let path = FsPath::new(out);
    if !path.is_absolute() {
        return Err(ExportError::Invalid(format!(
            "--out {out}: the server needs an absolute path (the CLI makes one of a relative path)"
        )));
    }
    let path = lexically_normal(path);
    if let Some(roots) = &settings.local_roots
        && !roots.iter().any(|root| path.starts_with(root))
    {
        let roots: Vec<String> = roots.iter().map(|r| r.display().to_string()).collect();
        return Err(ExportError::Invalid(format!(
            "--out {out}: exports to this server's disk may go only below {} (setting: \
             --export-root)",
            if roots.is_empty() {
                "no directory".to_owned()
            } else {
                roots.join(", ")
            }
        )));
    }
    Url::from_directory_path(&path)
        .map_err(|()| ExportError::Invalid(format!("--out {out}: not a usable directory")))
}

/// `path` without `.` and `..` (which would otherwise walk out of an export root).
fn lexically_normal(path: &FsPath) -> PathBuf {
    let mut normal = PathBuf::new();
    for part in path.components() {
        match part {
            std::path::Component::ParentDir => {
                normal.pop();
            }
            std::path::Component::CurDir => {}
            other => normal.push(other),
        }
    }
    normal
}

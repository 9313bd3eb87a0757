//! The embedded default source: a directory of Kubernetes manifests (YAML or JSON,
//! several documents per file, `kind: List` too), re-read when a file changes.
//!
//! Changes are found by polling file metadata (path, size, mtime, inode) every
//! `interval`: cheap, works on every filesystem and with editors that replace files by
//! rename. Only changed files are parsed again; every change is delivered as one
//! `Resync`, and the consumer's `Store` works out which objects really changed.
use std::collections::BTreeMap;
use std::os::unix::fs::MetadataExt as _;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::Context as _;
use futures::FutureExt as _;
use futures::future::BoxFuture;
use tokio::sync::mpsc;
use tracing::{debug, info, warn};

use crate::object::{KindSet, Object, ObjectError};
use crate::source::{Event, Source};

/// Identity of a file's content as far as metadata can tell.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Stamp {
    len: u64,
    mtime_ns: i128,
    ino: u64,
}

#[derive(Clone, Debug, Default)]
struct Parsed {
    objects: Vec<(Object, Option<String>)>,
    errors: Vec<ObjectError>,
    /// The file could not be read to its end (I/O error or YAML syntax error): it may be
    /// half written.
    truncated: bool,
}

/// `--manifests DIR`.
pub struct ManifestDir {
    dir: PathBuf,
    interval: Duration,
}

impl ManifestDir {
    pub fn new(dir: PathBuf, interval: Duration) -> Self {
        ManifestDir { dir, interval }
    }
}

impl Source for ManifestDir {
    fn run(
        self: Box<Self>,
        kinds: KindSet,
        tx: mpsc::Sender<Event>,
    ) -> BoxFuture<'static, anyhow::Result<()>> {
        async move {
            if !self.dir.is_dir() {
                anyhow::bail!(
                    "manifests directory {} does not exist or is not a directory: pass an \
                     existing directory to --manifests",
                    self.dir.display()
                );
            }
            info!(dir = %self.dir.display(), "reading manifests");
            let mut cache: BTreeMap<PathBuf, (Stamp, Parsed)> = BTreeMap::new();
            let mut first = true;
            loop {
                let changed = tokio::task::block_in_place(|| rescan(&self.dir, &mut cache))?;
                if changed || first {
                    first = false;
                    let mut objects = Vec::new();
                    let mut errors = Vec::new();
                    for (_, parsed) in cache.values() {
                        objects.extend(
                            parsed
                                .objects
                                .iter()
                                .filter(|(o, _)| kinds.contains(o.kind()))
                                .cloned(),
                        );
                        errors.extend(parsed.errors.iter().cloned());
                    }
                    debug!(
                        objects = objects.len(),
                        errors = errors.len(),
                        "manifests changed"
                    );
                    let event = Event::Resync {
                        kinds: kinds.iter().collect(),
                        objects,
                        errors,
                    };
                    if tx.send(event).await.is_err() {
                        return Ok(());
                    }
                }
                tokio::time::sleep(self.interval).await;
            }
        }
        .boxed()
    }
}

/// Brings `cache` up to date with the directory; returns whether anything changed.
fn rescan(dir: &Path, cache: &mut BTreeMap<PathBuf, (Stamp, Parsed)>) -> anyhow::Result<bool> {
    let mut files = Vec::new();
    collect_files(dir, &mut files)
        .with_context(|| format!("listing manifests directory {}", dir.display()))?;
    let mut changed = false;
    let before = cache.len();
    cache.retain(|p, _| files.iter().any(|(f, _)| f == p));
    changed |= cache.len() != before;
    for (path, stamp) in files {
        if cache.get(&path).is_some_and(|(s, _)| *s == stamp) {
            continue;
        }
        changed = true;
        let mut parsed = match std::fs::read_to_string(&path) {
            Ok(text) => parse_file(&display_name(dir, &path), &text),
            Err(e) => {
                warn!(file = %path.display(), error = %e, "cannot read manifest");
                Parsed {
                    objects: vec![],
                    errors: vec![ObjectError::document(
                        display_name(dir, &path),
                        format!("cannot read file: {e}"),
                    )],
                    truncated: true,
                }
            }
        };
        // A file that cannot be read to its end may be half written by a non-atomic
        // editor: keep serving the objects of its last good version (and say so) rather
        // than withdrawing them until the next write.
        if parsed.truncated
            && let Some((_, last)) = cache.get(&path)
            && !last.truncated
        {
            for e in &mut parsed.errors {
                e.reason.push_str(" (keeping the file's last good version)");
            }
            parsed.objects.clone_from(&last.objects);
            parsed.truncated = false;
        }
        cache.insert(path, (stamp, parsed));
    }
    Ok(changed)
}

fn display_name(dir: &Path, path: &Path) -> String {
    path.strip_prefix(dir).unwrap_or(path).display().to_string()
}

fn collect_files(dir: &Path, out: &mut Vec<(PathBuf, Stamp)>) -> std::io::Result<()> {
    let mut entries: Vec<_> = std::fs::read_dir(dir)?.collect::<Result<_, _>>()?;
    entries.sort_by_key(std::fs::DirEntry::path);
    for entry in entries {
        let path = entry.path();
        let name = entry.file_name();
        let name = name.to_string_lossy();
        if name.starts_with('.') {
            continue; // editor swap files, ..data symlinks of ConfigMap volumes
        }
        let meta = match std::fs::metadata(&path) {
            Ok(m) => m,
            // Removed between listing and stat (a rename in progress): next scan sees it.
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
            Err(e) => return Err(e),
        };
        if meta.is_dir() {
            collect_files(&path, out)?;
        } else if [".yaml", ".yml", ".json"].iter().any(|e| name.ends_with(e)) {
            let stamp = Stamp {
                len: meta.len(),
                mtime_ns: i128::from(meta.mtime()) * 1_000_000_000 + i128::from(meta.mtime_nsec()),
                ino: meta.ino(),
            };
            out.push((path, stamp));
        }
    }
    Ok(())
}

/// Parses every document of one file. Never fails as a whole: a bad document becomes an
/// error entry naming the file, the document and, when it got that far, the object.
fn parse_file(file: &str, text: &str) -> Parsed {
    let mut parsed = Parsed::default();
    for (i, doc) in serde_yaml::Deserializer::from_str(text).enumerate() {
        let origin = format!("{file} (document {})", i + 1);
        let value: serde_json::Value = match serde::Deserialize::deserialize(doc) {
            Ok(v) => v,
            Err(e) => {
                parsed
                    .errors
                    .push(ObjectError::document(origin, e.to_string()));
                parsed.truncated = true;
                // serde_yaml cannot resume after a syntax error in a stream.
                break;
            }
        };
        if value.is_null() {
            continue; // empty document, e.g. a trailing `---`
        }
        let items = match value.get("kind").and_then(|k| k.as_str()) {
            Some("List") => value
                .get("items")
                .and_then(|i| i.as_array())
                .cloned()
                .unwrap_or_default(),
            _ => vec![value],
        };
        for item in items {
            match Object::from_value(item) {
                Ok(Some(object)) => parsed.objects.push((object, Some(origin.clone()))),
                Ok(None) => {}
                Err(mut e) => {
                    e.origin = Some(origin.clone());
                    parsed.errors.push(e);
                }
            }
        }
    }
    parsed
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::object::Kind;
    use crate::store::Store;

    const GOOD: &str = r"
apiVersion: v1
kind: Service
metadata: {name: backend, namespace: default}
spec:
  clusterIP: 10.96.0.10
  ports: [{port: 80, targetPort: 8080, protocol: TCP}]
---
apiVersion: apps/v1
kind: Deployment
metadata: {name: ignored}
---
";

    #[test]
    fn parses_multi_document_files_and_ignores_other_kinds() {
        let p = parse_file("a.yaml", GOOD);
        assert!(p.errors.is_empty(), "{:?}", p.errors);
        assert_eq!(p.objects.len(), 1);
        assert_eq!(
            p.objects[0].0.object_ref().to_string(),
            "Service default/backend"
        );
        assert_eq!(p.objects[0].1.as_deref(), Some("a.yaml (document 1)"));
    }

    #[test]
    fn a_bad_object_names_file_object_and_reason() {
        let text = r"
apiVersion: v1
kind: Service
metadata: {name: broken, namespace: shop}
spec:
  ports: [{port: not-a-number}]
---
apiVersion: v1
kind: Service
metadata: {name: fine}
spec: {ports: [{port: 80}]}
";
        let p = parse_file("svc.yaml", text);
        assert_eq!(p.objects.len(), 1);
        assert_eq!(p.errors.len(), 1);
        let msg = p.errors[0].to_string();
        assert!(
            msg.starts_with("svc.yaml (document 1): Service shop/broken: "),
            "{msg}"
        );
    }

    #[test]
    fn json_and_lists_are_read() {
        let text = r#"{"apiVersion":"v1","kind":"List","items":[
            {"apiVersion":"v1","kind":"Node","metadata":{"name":"node-0"}},
            {"apiVersion":"v1","kind":"Node","metadata":{"name":"node-1"}}]}"#;
        let p = parse_file("nodes.json", text);
        assert_eq!(p.objects.len(), 2);
        assert_eq!(p.objects[1].0.object_ref().to_string(), "Node node-1");
    }

    #[test]
    fn a_half_written_file_keeps_its_last_good_objects() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("a.yaml");
        std::fs::write(&path, GOOD).unwrap();
        let mut cache = BTreeMap::new();
        assert!(rescan(dir.path(), &mut cache).unwrap());
        // Half of the file, cut inside a flow mapping: a YAML syntax error.
        std::fs::write(&path, &GOOD[..60]).unwrap();
        assert!(rescan(dir.path(), &mut cache).unwrap());
        let (_, parsed) = &cache[&path];
        assert_eq!(parsed.objects.len(), 1, "last good objects kept");
        assert!(
            parsed.errors[0].reason.contains("last good version"),
            "{:?}",
            parsed.errors
        );
    }

    #[tokio::test(flavor = "multi_thread")]
    async fn directory_changes_are_delivered() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("a.yaml"), GOOD).unwrap();
        let (tx, mut rx) = mpsc::channel(8);
        let src = Box::new(ManifestDir::new(
            dir.path().into(),
            Duration::from_millis(20),
        ));
        let task = tokio::spawn(src.run(KindSet::of(&[Kind::Service]), tx));
        let mut store = Store::new();
        let c = store.apply(rx.recv().await.unwrap());
        assert_eq!(c.changed.len(), 1);
        std::fs::write(dir.path().join("a.yaml"), GOOD.replace("backend", "other")).unwrap();
        let c = store.apply(rx.recv().await.unwrap());
        let names: Vec<_> = c.changed.iter().map(|r| r.name.as_str()).collect();
        assert_eq!(names, ["backend", "other"]);
        task.abort();
    }
}

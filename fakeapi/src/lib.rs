//! A fake Kubernetes API server for tests, so kube-rs (and kube-runtime's watcher) run
//! unmodified against it without a cluster.
//!
//! It serves plain HTTP on 127.0.0.1 (port picked by the kernel) what kube-apiserver
//! serves for list and watch:
//! - `GET /api/v1/services`, `/api/v1/namespaces/{ns}/services`,
//!   `/apis/discovery.k8s.io/v1/endpointslices`, ... (the kinds in [`resources::RESOURCES`]):
//!   a `*List` with `metadata.resourceVersion`, paginated with `limit`/`continue` (every
//!   page as of the first page's resourceVersion), `fieldSelector` and `labelSelector`
//!   honoured;
//! - `?watch=true&resourceVersion=N`: newline-delimited `{"type": "ADDED|MODIFIED|DELETED|
//!   BOOKMARK|ERROR", "object": ...}` for every change after N; BOOKMARKs when
//!   `allowWatchBookmarks=true` (on [`FakeApi::send_bookmarks`], every
//!   [`Config::bookmark_interval`] and when `timeoutSeconds` ends the watch); and, when N is
//!   older than the retained history, an ERROR event carrying a `Status` with code 410 and
//!   reason `Expired`, as the real server sends it (kube-runtime relists on it);
//! - `PATCH` (JSON merge patch, RFC 7386, only) and `PUT` of one existing object or of its
//!   `status` subresource (`.../ingresses/{name}/status`): the stored object changes, gets
//!   the next resourceVersion, and watchers see MODIFIED (details in the server module).
//!
//! Tests change the cluster with [`FakeApi::apply`] and [`FakeApi::delete`] (each change
//! gets the next resourceVersion), and disturb the watches with
//! [`FakeApi::close_watches`], [`FakeApi::compact`], [`FakeApi::pause_watches`] and
//! [`FakeApi::pause_lists`], and make writes fail with [`FakeApi::fail_writes`].
#![forbid(unsafe_code)]

pub mod resources;
mod selector;
mod server;
mod state;

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use serde::Serialize;
use serde_json::Value;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinSet;
use tracing::debug;

pub use selector::Selector;
pub use state::Error;
use state::State;

/// How the server behaves.
#[derive(Clone, Debug)]
pub struct Config {
    /// How many changes are kept for watches to resume from; a watch from before the
    /// oldest kept change gets 410 Gone (etcd's compaction window, in changes).
    pub history_window: usize,
    /// Pages are at most this long even when the client asks for more (the API server may
    /// return fewer items than `limit`), to exercise pagination with few objects.
    pub max_page_size: Option<usize>,
    /// Send a BOOKMARK on every watch that allows them this often.
    pub bookmark_interval: Option<Duration>,
    /// How long a watch lasts when the request has no `timeoutSeconds`.
    pub default_watch_timeout: Duration,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            history_window: 10_000,
            max_page_size: None,
            bookmark_interval: None,
            default_watch_timeout: Duration::from_mins(30),
        }
    }
}

/// One request the server received.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RequestRecord {
    pub method: String,
    pub path: String,
    /// The kind the path names, when it names one.
    pub kind: Option<&'static str>,
    pub query: BTreeMap<String, String>,
}

impl RequestRecord {
    pub fn is_watch(&self) -> bool {
        matches!(
            self.query.get("watch").map(String::as_str),
            Some("true" | "1")
        )
    }

    /// A list (or one page of one).
    pub fn is_list(&self) -> bool {
        self.method == "GET" && self.kind.is_some() && !self.is_watch()
    }

    pub fn param(&self, name: &str) -> Option<&str> {
        self.query.get(name).map(String::as_str)
    }
}

pub(crate) struct Shared {
    state: Mutex<State>,
    /// Bumped on every change of `state`: watch streams and paused lists wait on it.
    tick: watch::Sender<u64>,
    requests: Mutex<Vec<RequestRecord>>,
    config: Config,
}

pub(crate) struct Locked<'a> {
    guard: MutexGuard<'a, State>,
}

impl std::ops::Deref for Locked<'_> {
    type Target = State;
    fn deref(&self) -> &State {
        &self.guard
    }
}

impl std::ops::DerefMut for Locked<'_> {
    fn deref_mut(&mut self) -> &mut State {
        &mut self.guard
    }
}

impl Shared {
    /// The state; a panic in a test holding the lock does not poison it for the others.
    fn lock(&self) -> Locked<'_> {
        Locked {
            guard: self
                .state
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner),
        }
    }

    /// Changes the state and wakes every watch and paused list.
    fn change<T>(&self, f: impl FnOnce(&mut State) -> T) -> T {
        let out = f(&mut self.lock());
        self.tick.send_modify(|t| *t += 1);
        out
    }

    fn record(&self, r: RequestRecord) {
        debug!(method = %r.method, path = %r.path, query = ?r.query, "request");
        self.requests
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .push(r);
    }
}

/// A running fake API server; it stops when dropped.
pub struct FakeApi {
    shared: Arc<Shared>,
    addr: SocketAddr,
    server: tokio::task::JoinHandle<()>,
}

impl Drop for FakeApi {
    fn drop(&mut self) {
        // Aborting the accept loop drops its connections, and with them every watch.
        self.server.abort();
    }
}

impl FakeApi {
    /// Starts a server with the default [`Config`] on 127.0.0.1, on a free port.
    pub async fn start() -> FakeApi {
        FakeApi::start_with(Config::default()).await
    }

    pub async fn start_with(config: Config) -> FakeApi {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .expect("cannot bind 127.0.0.1:0 for the fake API server");
        let addr = listener
            .local_addr()
            .expect("local address of a bound socket");
        let shared = Arc::new(Shared {
            state: Mutex::new(State::new(config.history_window)),
            tick: watch::Sender::new(0),
            requests: Mutex::new(Vec::new()),
            config,
        });
        let server = tokio::spawn(serve(listener, Arc::clone(&shared)));
        FakeApi {
            shared,
            addr,
            server,
        }
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// `http://127.0.0.1:PORT`.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// The kubeconfig YAML for this server (plain HTTP, no credentials).
    pub fn kubeconfig(&self) -> String {
        format!(
            "apiVersion: v1
kind: Config
clusters:
- name: fakeapi
  cluster:
    server: {url}
users:
- name: fakeapi
  user: {{}}
contexts:
- name: fakeapi
  context:
    cluster: fakeapi
    user: fakeapi
    namespace: default
current-context: fakeapi
",
            url = self.url()
        )
    }

    /// Writes [`FakeApi::kubeconfig`] to `dir/kubeconfig` and returns the path.
    pub fn kubeconfig_file(&self, dir: impl AsRef<Path>) -> PathBuf {
        let path = dir.as_ref().join("kubeconfig");
        std::fs::write(&path, self.kubeconfig())
            .unwrap_or_else(|e| panic!("cannot write {}: {e}", path.display()));
        path
    }

    /// Creates or updates an object (a `serde_json::Value` or a k8s-openapi type; it
    /// needs apiVersion, kind and metadata.name; namespaced kinds default to "default").
    /// Returns the object's resourceVersion: the next one, unless nothing changed.
    pub fn apply(&self, object: impl Serialize) -> Result<u64, Error> {
        let value = serde_json::to_value(object)?;
        self.shared.change(|st| st.apply(value))
    }

    /// Deletes an object by kind name (`"Service"`), namespace (ignored for cluster-scoped
    /// kinds) and name. Returns the deletion's resourceVersion.
    pub fn delete(&self, kind: &str, namespace: &str, name: &str) -> Result<u64, Error> {
        self.shared.change(|st| st.delete(kind, namespace, name))
    }

    /// The object as stored, if it exists.
    pub fn get(&self, kind: &str, namespace: &str, name: &str) -> Option<Value> {
        let r = resources::by_kind(kind)?;
        let ns = if r.namespaced { namespace } else { "" };
        self.shared
            .lock()
            .objects
            .get(&(r, ns.to_owned(), name.to_owned()))
            .map(|o| (**o).clone())
    }

    /// The last resourceVersion handed out.
    pub fn resource_version(&self) -> u64 {
        self.shared.lock().rv
    }

    /// Forgets the change history (and pending continue tokens): any watch that has not
    /// caught up, and any later watch from an older resourceVersion, gets 410 Gone.
    pub fn compact(&self) {
        self.shared.change(State::compact);
    }

    /// Keeps only the last `n` changes from now on.
    pub fn set_history_window(&self, n: usize) {
        self.shared.change(|st| st.history_window = n);
    }

    /// Ends every open watch stream (cleanly, as when the server's watch timeout ends
    /// it); clients must open a new watch to see further changes.
    pub fn close_watches(&self) {
        self.shared.change(|st| st.watch_epoch += 1);
    }

    /// Sends a BOOKMARK with the current resourceVersion on every open watch that
    /// allows bookmarks.
    pub fn send_bookmarks(&self) {
        self.shared.change(|st| st.bookmark_epoch += 1);
    }

    /// Watch streams (open and new) deliver nothing until [`FakeApi::resume_watches`]:
    /// a client that is cut off, or slow. On resume, a watch whose resourceVersion was
    /// compacted meanwhile gets 410 Gone.
    pub fn pause_watches(&self) {
        self.shared.change(|st| st.watches_paused = true);
    }

    pub fn resume_watches(&self) {
        self.shared.change(|st| st.watches_paused = false);
    }

    /// List requests take their snapshot but do not answer until
    /// [`FakeApi::resume_lists`]: changes made meanwhile are newer than the list, as
    /// changes during a slow relist are.
    pub fn pause_lists(&self) {
        self.shared.change(|st| st.lists_paused = true);
    }

    /// Answers held lists (all of them, also those held by [`FakeApi::pause_lists_of`]).
    pub fn resume_lists(&self) {
        self.shared.change(|st| {
            st.lists_paused = false;
            st.lists_paused_of.clear();
        });
    }

    /// Like [`FakeApi::pause_lists`], for one kind only (`"Node"`): a client's other
    /// watchers list as usual. Unknown kind names are an error.
    pub fn pause_lists_of(&self, kind: &str) -> Result<(), Error> {
        let r = resources::by_kind(kind).ok_or_else(|| Error::UnknownKindName(kind.to_owned()))?;
        self.shared.change(|st| st.lists_paused_of.insert(r.kind));
        Ok(())
    }

    /// From now on PATCH and PUT fail with HTTP status `code` (a `Status` with reason
    /// `InternalError` for 5xx, `Forbidden` for 403, else `BadRequest`) and write nothing;
    /// `None` lets them write again.
    pub fn fail_writes(&self, code: Option<u16>) {
        self.shared.change(|st| st.failing_writes = code);
    }

    /// Every request received so far, in order.
    pub fn requests(&self) -> Vec<RequestRecord> {
        self.shared
            .requests
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
    }

    /// How many watch streams of `kind` are open.
    pub fn open_watches(&self, kind: &str) -> usize {
        self.shared
            .lock()
            .open_watches
            .get(kind)
            .copied()
            .unwrap_or(0)
    }

    /// Open watch streams per kind.
    pub fn all_open_watches(&self) -> HashMap<&'static str, usize> {
        self.shared.lock().open_watches.clone()
    }
}

async fn serve(listener: TcpListener, shared: Arc<Shared>) {
    let mut connections = JoinSet::new();
    loop {
        tokio::select! {
            accepted = listener.accept() => {
                let stream = match accepted {
                    Ok((stream, _)) => stream,
                    Err(e) => {
                        debug!(error = %e, "accept failed");
                        continue;
                    }
                };
                let shared = Arc::clone(&shared);
                connections.spawn(async move {
                    let service = service_fn(move |req| server::handle(Arc::clone(&shared), req));
                    if let Err(e) = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), service)
                        .await
                    {
                        debug!(error = %e, "connection ended with an error");
                    }
                });
            }
            Some(_) = connections.join_next(), if !connections.is_empty() => {}
        }
    }
}

//! The HTTP side: GET list (with `limit`/`continue`), GET of one object, and watch
//! (`?watch=true`) as newline-delimited JSON watch events, the way kube-apiserver answers
//! kube-rs' `Api::list` and `Api::watch` (kube-core request.rs builds these requests);
//! and writes of one existing object or of its `status` subresource: PATCH with a JSON
//! merge patch (RFC 7386, `application/merge-patch+json`; other patch types get 415) and
//! PUT of the whole object (kube-rs' `patch`, `patch_status`, `replace`,
//! `replace_status`). As on the real server, a write of `status` changes only the status,
//! a write of the object never changes its status, a `metadata.resourceVersion` in the
//! body is a precondition (409 Conflict when stale), and a write that changes nothing
//! keeps the resourceVersion and sends no watch event.
use std::collections::{BTreeMap, VecDeque};
use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt as _, Full, StreamBody, combinators::BoxBody};
use hyper::body::{Frame, Incoming};
use hyper::{Method, Request, Response, StatusCode};
use serde_json::{Value, json};
use tokio::sync::mpsc;
use tracing::debug;

use crate::resources::{self, Target};
use crate::selector::Selector;
use crate::state::{Change, EventType, Snapshot};
use crate::{RequestRecord, Shared};

pub type Body = BoxBody<Bytes, Infallible>;

/// Answers one request.
pub async fn handle(
    shared: Arc<Shared>,
    req: Request<Incoming>,
) -> Result<Response<Body>, Infallible> {
    let path = req.uri().path().to_owned();
    let query: BTreeMap<String, String> =
        form_urlencoded::parse(req.uri().query().unwrap_or_default().as_bytes())
            .into_owned()
            .collect();
    let target = resources::parse_path(&path);
    shared.record(RequestRecord {
        method: req.method().to_string(),
        path: path.clone(),
        kind: target.as_ref().map(|t| t.resource.kind),
        query: query.clone(),
    });
    let Some(target) = target else {
        return Ok(status(
            StatusCode::NOT_FOUND,
            "NotFound",
            "the server could not find the requested resource",
        ));
    };
    if matches!(*req.method(), Method::PATCH | Method::PUT) {
        return Ok(write_request(&shared, &target, req).await);
    }
    if req.method() != Method::GET {
        return Ok(status(
            StatusCode::METHOD_NOT_ALLOWED,
            "MethodNotAllowed",
            "the fake API server only serves GET (list, get and watch), PATCH and PUT",
        ));
    }
    let selector = match Selector::parse(
        query.get("fieldSelector").map(String::as_str),
        query.get("labelSelector").map(String::as_str),
    ) {
        Ok(s) => s,
        Err(e) => return Ok(status(StatusCode::BAD_REQUEST, "BadRequest", &e)),
    };
    let watch = matches!(query.get("watch").map(String::as_str), Some("true" | "1"));
    Ok(if watch {
        watch_response(&shared, target, selector, &query)
    } else if let Some(name) = &target.name {
        get(&shared, &target, name)
    } else {
        list(&shared, &target, &selector, &query).await
    })
}

fn json_response(code: StatusCode, body: &Value) -> Response<Body> {
    let mut resp = Response::new(Full::new(Bytes::from(body.to_string())).boxed());
    *resp.status_mut() = code;
    resp.headers_mut().insert(
        hyper::header::CONTENT_TYPE,
        hyper::header::HeaderValue::from_static("application/json"),
    );
    resp
}

/// A `metav1.Status` failure, as the API server answers errors.
fn status_object(code: u16, reason: &str, message: &str) -> Value {
    json!({
        "kind": "Status",
        "apiVersion": "v1",
        "metadata": {},
        "status": "Failure",
        "message": message,
        "reason": reason,
        "code": code,
    })
}

fn status(code: StatusCode, reason: &str, message: &str) -> Response<Body> {
    json_response(code, &status_object(code.as_u16(), reason, message))
}

fn matches_target(target: &Target, namespace: &str) -> bool {
    target.namespace.as_deref().is_none_or(|ns| ns == namespace)
}

fn get(shared: &Shared, target: &Target, name: &str) -> Response<Body> {
    let st = shared.lock();
    let key = (
        target.resource,
        target.namespace.clone().unwrap_or_default(),
        name.to_owned(),
    );
    match st.objects.get(&key) {
        Some(o) => json_response(StatusCode::OK, o),
        None => status(
            StatusCode::NOT_FOUND,
            "NotFound",
            &format!("{} \"{name}\" not found", target.resource.plural),
        ),
    }
}

/// What a PATCH or PUT writes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Write {
    /// A JSON merge patch (RFC 7386).
    MergePatch,
    /// The whole object.
    Replace,
}

async fn write_request(shared: &Shared, target: &Target, req: Request<Incoming>) -> Response<Body> {
    let Some(name) = target.name.clone() else {
        return status(
            StatusCode::METHOD_NOT_ALLOWED,
            "MethodNotAllowed",
            "the fake API server writes single objects only",
        );
    };
    let media = req
        .headers()
        .get(hyper::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .map(|v| {
            v.split(';')
                .next()
                .unwrap_or_default()
                .trim()
                .to_ascii_lowercase()
        });
    let how = if req.method() == Method::PATCH {
        if media.as_deref() != Some("application/merge-patch+json") {
            return status(
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                "UnsupportedMediaType",
                &format!(
                    "the fake API server applies only application/merge-patch+json patches, \
                     not {}",
                    media.as_deref().unwrap_or("(no Content-Type)")
                ),
            );
        }
        Write::MergePatch
    } else {
        if media.as_deref().is_some_and(|m| m != "application/json") {
            return status(
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                "UnsupportedMediaType",
                "the fake API server reads only application/json objects",
            );
        }
        Write::Replace
    };
    let body = match req.into_body().collect().await {
        Ok(b) => b.to_bytes(),
        Err(e) => {
            return status(
                StatusCode::BAD_REQUEST,
                "BadRequest",
                &format!("cannot read the body: {e}"),
            );
        }
    };
    let input = match serde_json::from_slice::<Value>(&body) {
        Ok(v @ Value::Object(_)) => v,
        Ok(_) => {
            return status(
                StatusCode::BAD_REQUEST,
                "BadRequest",
                "the body is not a JSON object",
            );
        }
        Err(e) => {
            return status(
                StatusCode::BAD_REQUEST,
                "BadRequest",
                &format!("the body is not JSON: {e}"),
            );
        }
    };
    write(shared, target, &name, how, &input)
}

/// `ingresses.networking.k8s.io`, as the API server names a resource in messages.
fn qualified(target: &Target) -> String {
    if target.resource.group.is_empty() {
        target.resource.plural.to_owned()
    } else {
        format!("{}.{}", target.resource.plural, target.resource.group)
    }
}

/// Applies one PATCH or PUT of object `name` (or of its status) to the state.
fn write(
    shared: &Shared,
    target: &Target,
    name: &str,
    how: Write,
    input: &Value,
) -> Response<Body> {
    let namespace = target.namespace.clone().unwrap_or_default();
    let resource = qualified(target);
    if how == Write::Replace {
        for (field, want) in [("name", name), ("namespace", namespace.as_str())] {
            if let Some(got) = input
                .pointer(&format!("/metadata/{field}"))
                .and_then(Value::as_str)
                && got != want
                && (field != "namespace" || target.resource.namespaced)
            {
                return status(
                    StatusCode::BAD_REQUEST,
                    "BadRequest",
                    &format!(
                        "the {field} of the object ({got}) does not match the {field} on the URL \
                         ({want})"
                    ),
                );
            }
        }
    }
    let status_only = target.subresource.as_deref() == Some("status");
    shared.change(|st| {
        if let Some(code) = st.failing_writes {
            let code = StatusCode::from_u16(code).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
            let reason = match code.as_u16() {
                403 => "Forbidden",
                500.. => "InternalError",
                _ => "BadRequest",
            };
            return status(code, reason, "writes fail (FakeApi::fail_writes)");
        }
        let key = (target.resource, namespace.clone(), name.to_owned());
        let Some(stored) = st.objects.get(&key).cloned() else {
            return status(
                StatusCode::NOT_FOUND,
                "NotFound",
                &format!("{resource} \"{name}\" not found"),
            );
        };
        let current_rv = stored
            .pointer("/metadata/resourceVersion")
            .and_then(Value::as_str);
        if let Some(rv) = input
            .pointer("/metadata/resourceVersion")
            .and_then(Value::as_str)
            && Some(rv) != current_rv
        {
            return status(
                StatusCode::CONFLICT,
                "Conflict",
                &format!(
                    "Operation cannot be fulfilled on {resource} \"{name}\": the object has \
                     been modified; please apply your changes to the latest version and try \
                     again"
                ),
            );
        }
        let mut written = match how {
            Write::MergePatch => {
                let mut o = (*stored).clone();
                merge_patch(&mut o, input);
                o
            }
            Write::Replace => input.clone(),
        };
        let result = if status_only {
            // Only the status is taken from the write.
            let mut o = (*stored).clone();
            set_field(&mut o, "status", written.get("status").cloned());
            o
        } else {
            // The object's own endpoint never changes its status; type and identity are
            // the server's.
            set_field(&mut written, "status", stored.get("status").cloned());
            for field in ["apiVersion", "kind"] {
                set_field(&mut written, field, stored.get(field).cloned());
            }
            if !written.get("metadata").is_some_and(Value::is_object) {
                written["metadata"] = json!({});
            }
            for field in ["name", "namespace", "uid", "creationTimestamp"] {
                let value = stored.pointer(&format!("/metadata/{field}")).cloned();
                set_field(&mut written["metadata"], field, value);
            }
            written
        };
        match st.apply(result) {
            Ok(_) => match st.objects.get(&key) {
                Some(o) => json_response(StatusCode::OK, o),
                None => status(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "InternalError",
                    "the written object is gone",
                ),
            },
            Err(e) => status(StatusCode::BAD_REQUEST, "BadRequest", &e.to_string()),
        }
    })
}

/// Sets `object[field]`, or removes it when `value` is `None`.
fn set_field(object: &mut Value, field: &str, value: Option<Value>) {
    if let Some(m) = object.as_object_mut() {
        match value {
            Some(v) => m.insert(field.to_owned(), v),
            None => m.remove(field),
        };
    }
}

/// RFC 7386 JSON merge patch: objects merge key by key, `null` removes a key, anything
/// else (arrays included) replaces the target.
pub(crate) fn merge_patch(target: &mut Value, patch: &Value) {
    let Value::Object(patch) = patch else {
        patch.clone_into(target);
        return;
    };
    if !target.is_object() {
        *target = Value::Object(serde_json::Map::new());
    }
    if let Value::Object(t) = target {
        for (k, v) in patch {
            if v.is_null() {
                t.remove(k);
            } else {
                merge_patch(t.entry(k.as_str()).or_insert(Value::Null), v);
            }
        }
    }
}

/// A list, or one page of it. Pages after the first come from a snapshot taken with the
/// first, so every page is as of the same resourceVersion (like etcd's paginated reads).
async fn list(
    shared: &Shared,
    target: &Target,
    selector: &Selector,
    query: &BTreeMap<String, String>,
) -> Response<Body> {
    let limit = match query.get("limit").map(|l| l.parse::<usize>()) {
        None | Some(Ok(0)) => None,
        Some(Ok(n)) => Some(n),
        Some(Err(_)) => {
            return status(
                StatusCode::BAD_REQUEST,
                "BadRequest",
                "limit is not a number",
            );
        }
    };
    let page = match (limit, shared.config.max_page_size) {
        (Some(l), Some(m)) => Some(l.min(m)),
        (l, None) => l,
        (None, m) => m,
    };
    let body = {
        let mut st = shared.lock();
        let (rv, mut items): (u64, VecDeque<Arc<Value>>) = match query.get("continue") {
            Some(token) => match st.snapshots.remove(token) {
                Some(Snapshot { rv, rest }) => (rv, rest),
                None => {
                    return status(
                        StatusCode::GONE,
                        "Expired",
                        "The provided continue parameter is too old to display a consistent \
                         list result. You can start a new list without the continue parameter.",
                    );
                }
            },
            None => (
                st.rv,
                st.objects
                    .iter()
                    .filter(|((r, ns, _), o)| {
                        *r == target.resource && matches_target(target, ns) && selector.matches(o)
                    })
                    .map(|(_, o)| Arc::clone(o))
                    .collect(),
            ),
        };
        let rest = match page {
            Some(n) if items.len() > n => items.split_off(n),
            _ => VecDeque::new(),
        };
        let mut metadata = json!({"resourceVersion": rv.to_string()});
        if !rest.is_empty() {
            st.next_token += 1;
            let token = format!("fakeapi-continue-{}", st.next_token);
            metadata["continue"] = json!(token);
            metadata["remainingItemCount"] = json!(rest.len());
            st.snapshots.insert(token, Snapshot { rv, rest });
        }
        // Items of a list carry no apiVersion/kind, as on the real server.
        let items: Vec<Value> = items
            .iter()
            .map(|o| {
                let mut o = (**o).clone();
                if let Some(m) = o.as_object_mut() {
                    m.remove("apiVersion");
                    m.remove("kind");
                }
                o
            })
            .collect();
        json!({
            "kind": target.resource.list_kind(),
            "apiVersion": target.resource.api_version(),
            "metadata": metadata,
            "items": items,
        })
    };
    // A paused list has its snapshot already: changes made meanwhile are newer than it.
    let mut tick = shared.tick.subscribe();
    while shared.lock().list_paused(target.resource.kind) {
        if tick.changed().await.is_err() {
            break;
        }
    }
    json_response(StatusCode::OK, &body)
}

/// Where a watch starts.
enum Start {
    /// `resourceVersion` unset or "0": the current objects as ADDED, then changes.
    /// `initial_end` asks for the bookmark that ends a streaming list.
    Current { initial_end: bool },
    /// Changes after this resourceVersion.
    After(u64),
}

fn watch_response(
    shared: &Arc<Shared>,
    target: Target,
    selector: Selector,
    query: &BTreeMap<String, String>,
) -> Response<Body> {
    let initial_end = query.get("sendInitialEvents").map(String::as_str) == Some("true");
    let start = match query.get("resourceVersion").map(String::as_str) {
        None | Some("" | "0") => Start::Current { initial_end },
        Some(rv) => match rv.parse() {
            Ok(rv) if !initial_end => Start::After(rv),
            Ok(_) => {
                return status(
                    StatusCode::BAD_REQUEST,
                    "BadRequest",
                    "sendInitialEvents is only served from resourceVersion \"\" or \"0\"",
                );
            }
            Err(_) => {
                return status(
                    StatusCode::BAD_REQUEST,
                    "BadRequest",
                    &format!("invalid resourceVersion {rv:?}"),
                );
            }
        },
    };
    let bookmarks = query.get("allowWatchBookmarks").map(String::as_str) == Some("true");
    let timeout = query
        .get("timeoutSeconds")
        .and_then(|t| t.parse().ok())
        .map_or(shared.config.default_watch_timeout, Duration::from_secs);
    let (tx, rx) = mpsc::channel::<Bytes>(256);
    let watch = Watch {
        shared: Arc::clone(shared),
        epoch: shared.lock().watch_epoch,
        target,
        selector,
        bookmarks,
        timeout,
        tx,
    };
    tokio::spawn(watch.run(start));
    let frames = futures::stream::unfold(rx, |mut rx| async move {
        rx.recv()
            .await
            .map(|b| (Ok::<_, Infallible>(Frame::data(b)), rx))
    });
    let mut resp = Response::new(StreamBody::new(frames).boxed());
    resp.headers_mut().insert(
        hyper::header::CONTENT_TYPE,
        hyper::header::HeaderValue::from_static("application/json"),
    );
    resp
}

/// One open watch stream.
struct Watch {
    shared: Arc<Shared>,
    /// `close_watches` ends streams opened in an earlier epoch.
    epoch: u64,
    target: Target,
    selector: Selector,
    bookmarks: bool,
    timeout: Duration,
    tx: mpsc::Sender<Bytes>,
}

/// Counts a watch as open while it lives.
struct OpenGuard(Arc<Shared>, &'static str);

impl Drop for OpenGuard {
    fn drop(&mut self) {
        let mut st = self.0.lock();
        if let Some(n) = st.open_watches.get_mut(self.1) {
            *n = n.saturating_sub(1);
        }
    }
}

impl Watch {
    fn line(value: &Value) -> Bytes {
        let mut s = value.to_string();
        s.push('\n');
        Bytes::from(s)
    }

    fn bookmark(&self, rv: u64, initial_end: bool) -> Bytes {
        let mut metadata = json!({"resourceVersion": rv.to_string()});
        if initial_end {
            metadata["annotations"] = json!({"k8s.io/initial-events-end": "true"});
        }
        Self::line(&json!({
            "type": "BOOKMARK",
            "object": {
                "kind": self.target.resource.kind,
                "apiVersion": self.target.resource.api_version(),
                "metadata": metadata,
            }
        }))
    }

    /// What this watch sees of one change: with a selector, an object that starts
    /// matching is ADDED and one that stops matching is DELETED, as on the real server.
    fn event(&self, c: &Change) -> Option<Bytes> {
        if c.resource != self.target.resource || !matches_target(&self.target, &c.namespace) {
            return None;
        }
        let now = self.selector.matches(&c.object);
        let before = c
            .previous
            .as_ref()
            .is_some_and(|p| self.selector.matches(p));
        let ty = match (c.event, before, now) {
            (EventType::Added, _, true) | (EventType::Modified, false, true) => EventType::Added,
            (EventType::Modified, true, true) => EventType::Modified,
            (EventType::Modified, true, false) | (EventType::Deleted, _, true) => {
                EventType::Deleted
            }
            _ => return None,
        };
        Some(Self::line(
            &json!({"type": ty.as_str(), "object": &*c.object}),
        ))
    }

    async fn run(self, start: Start) {
        let kind = self.target.resource.kind;
        *self.shared.lock().open_watches.entry(kind).or_default() += 1;
        let _open = OpenGuard(Arc::clone(&self.shared), kind);
        let mut tick = self.shared.tick.subscribe();
        let deadline = tokio::time::Instant::now() + self.timeout;
        let mut bookmark_epoch = self.shared.lock().bookmark_epoch;
        let mut bookmark_due = false;
        let mut interval = self.shared.config.bookmark_interval.map(|d| {
            let mut i = tokio::time::interval_at(tokio::time::Instant::now() + d, d);
            i.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            i
        });
        let mut start = Some(start);
        let mut sent = 0u64;
        loop {
            let mut lines = Vec::new();
            let mut end = false;
            {
                let st = self.shared.lock();
                if st.watch_epoch != self.epoch {
                    debug!(kind, "watch closed by the test");
                    return;
                }
                if !st.watches_paused {
                    match start.take() {
                        Some(Start::Current { initial_end }) => {
                            for ((r, ns, _), o) in &st.objects {
                                if *r == self.target.resource
                                    && matches_target(&self.target, ns)
                                    && self.selector.matches(o)
                                {
                                    lines.push(Self::line(
                                        &json!({"type": "ADDED", "object": &**o}),
                                    ));
                                }
                            }
                            sent = st.rv;
                            if initial_end {
                                lines.push(self.bookmark(sent, true));
                            }
                        }
                        Some(Start::After(rv)) => sent = rv,
                        None => {}
                    }
                    match st.changes_after(sent) {
                        Some(changes) => {
                            lines.extend(changes.filter_map(|c| self.event(c)));
                            sent = sent.max(st.rv);
                            if self.bookmarks
                                && (bookmark_due || st.bookmark_epoch != bookmark_epoch)
                            {
                                lines.push(self.bookmark(sent, false));
                            }
                            bookmark_due = false;
                            bookmark_epoch = st.bookmark_epoch;
                        }
                        None => {
                            // What kube-apiserver sends when the watch cache no longer has
                            // the requested resourceVersion: an ERROR event, then the end.
                            let message =
                                format!("too old resource version: {sent} ({})", st.compacted + 1);
                            lines.push(Self::line(&json!({
                                "type": "ERROR",
                                "object": status_object(410, "Expired", &message),
                            })));
                            end = true;
                        }
                    }
                }
            }
            for line in lines {
                if self.tx.send(line).await.is_err() {
                    return;
                }
            }
            if end {
                return;
            }
            tokio::select! {
                changed = tick.changed() => if changed.is_err() { return },
                () = self.tx.closed() => return,
                () = tokio::time::sleep_until(deadline) => {
                    // timeoutSeconds elapsed: the server ends the watch; a bookmark first
                    // lets the client resume without a relist.
                    let paused = self.shared.lock().watches_paused;
                    if self.bookmarks && !paused && start.is_none() {
                        let _ = self.tx.send(self.bookmark(sent, false)).await;
                    }
                    return;
                }
                () = async {
                    match &mut interval {
                        Some(i) => {
                            i.tick().await;
                        }
                        None => std::future::pending().await,
                    }
                } => {
                    bookmark_due = true;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::merge_patch;
    use serde_json::json;

    #[test]
    fn merge_patch_follows_rfc_7386() {
        // The examples of RFC 7386, appendix A (a few), and its section 3 example.
        let cases = [
            (json!({"a": "b"}), json!({"a": "c"}), json!({"a": "c"})),
            (
                json!({"a": "b"}),
                json!({"b": "c"}),
                json!({"a": "b", "b": "c"}),
            ),
            (json!({"a": "b"}), json!({"a": null}), json!({})),
            (
                json!({"a": [{"b": "c"}]}),
                json!({"a": [1]}),
                json!({"a": [1]}),
            ),
            (json!(["a", "b"]), json!({"a": "c"}), json!({"a": "c"})),
            (
                json!({"e": null}),
                json!({"a": 1}),
                json!({"e": null, "a": 1}),
            ),
            (
                json!({}),
                json!({"a": {"bb": {"ccc": null}}}),
                json!({"a": {"bb": {}}}),
            ),
            (
                json!({"title": "Goodbye!", "author": {"givenName": "John", "familyName": "Doe"},
                       "tags": ["example", "sample"], "content": "This will be unchanged"}),
                json!({"title": "Hello!", "phoneNumber": "+01-123-456-7890",
                       "author": {"familyName": null}, "tags": ["example"]}),
                json!({"title": "Hello!", "author": {"givenName": "John"}, "tags": ["example"],
                       "content": "This will be unchanged", "phoneNumber": "+01-123-456-7890"}),
            ),
        ];
        for (mut target, patch, want) in cases {
            merge_patch(&mut target, &patch);
            assert_eq!(target, want, "patch {patch}");
        }
    }
}

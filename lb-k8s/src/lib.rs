//! Where cluster state comes from, for both daemons.
//!
//! A [`Source`] (kube-rs watchers in [`kube_source`], or a directory of manifests in
//! [`manifests`]) produces [`Event`]s; a consumer folds them into a [`Store`] and learns
//! which objects changed, so it can recompute only what they affect.
#![forbid(unsafe_code)]

pub mod kube_source;
pub mod manifests;
pub mod object;
pub mod source;
pub mod store;

pub use object::{Kind, KindSet, Object, ObjectError, ObjectRef};
pub use source::{Event, Source, SourceConfig};
pub use store::{Changes, Store};

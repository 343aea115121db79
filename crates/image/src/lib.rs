//! vessel's image side: content store, references, layer unpacking into snapshots,
//! registry pull/push and the SQLite state it shares with the engine.
//!
//! For the engine:
//! - [`store::Store::open`] on `--root` gives everything; it owns `vessel.db`,
//!   `blobs/sha256/<hex>` and `snapshots/<chain-id hex>/fs`. Its own directories are 0700
//!   and its files 0600 (see [`perms`]); only the image content in `fs/` keeps its modes.
//! - [`registry::pull::pull`] fetches an image (progress through a [`registry::pull::Progress`]);
//!   [`store::Store::lookup`] resolves a name, short id or digest to an image id.
//! - [`store::Store::layer_paths`] lists an image's snapshot dirs, lowest first: reverse
//!   them for overlay's `lowerdir=`. They are shared and must never be written to.
//! - A container holds its image with [`db::Db::add_lease`] (holder = container id) and
//!   lets go with [`db::Db::remove_lease`]; `rmi` and `prune` never delete a leased image.
//! - The engine's own tables go into the same database; `schema_versions` has one row per
//!   component (`image` is this crate's), so each migrates on its own.

pub mod archive;
pub mod blobs;
pub mod db;
pub mod digest;
pub mod error;
mod gzip;
pub mod layer;
pub mod manifest;
pub mod perms;
pub mod reference;
pub mod registry;
pub mod snapshots;
pub mod store;
mod stream;
pub mod unpack;
pub mod url_import;

pub use digest::Digest;
pub use error::{Error, Result};
pub use reference::Reference;

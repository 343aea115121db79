//! vessel's image side: content store, references, layer unpacking into snapshots,
//! registry pull/push and the SQLite state it shares with the engine.

pub mod archive;
pub mod blobs;
pub mod db;
pub mod digest;
pub mod error;
mod gzip;
pub mod layer;
pub mod manifest;
pub mod reference;
pub mod registry;
pub mod snapshots;
pub mod store;
pub mod unpack;

pub use digest::Digest;
pub use error::{Error, Result};
pub use reference::Reference;

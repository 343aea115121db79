//! The registry side: HTTP client with auth, and the pull/push flows on top of it.

pub mod auth;
pub mod client;
pub mod mirrors;
pub mod pull;
pub mod push;
pub mod tls;

pub use auth::Credentials;
pub use client::{Client, RegistryOptions, TlsVerify};

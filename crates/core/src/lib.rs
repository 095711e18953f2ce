//! # powerstrip-core: the proxy
//!
//! A transparent Docker Engine API proxy that runs PowerstripProtocolVersion 1 adapter
//! chains around matching calls. It stands where clients expect Docker's socket; every
//! call it does not hook behaves as if the client talked to Docker directly, streams and
//! interactive sessions included.
//!
//! ## Layout
//! - [`server`]: serving the proxy on the SDK's listeners ([`serve`]), the event follower,
//!   and a shutdown that waits for attach/exec sessions.
//! - [`proxy`]: one request's path — match, pre chain, Docker, post chain, respond — and
//!   the streaming and upgrade bypasses ([`Proxy`]).
//! - [`chains`]: adapters built from the configuration, matched per request and run in
//!   order with timeouts and failure policies ([`Chains`], [`Builtins`]).
//! - [`http_adapter`]: the client side of the protocol for adapters served over HTTP(S).
//! - [`events`]: follows Docker's `/events` and delivers them to subscribed adapters.
//! - [`reload`]: applies a changed configuration atomically (SIGHUP, file changes).
//! - [`metrics`] and [`admin`]: Prometheus metrics, `/healthz`, `/readyz`.
//! - [`target`]: the path Docker routes (percent-decoded), which patterns are matched
//!   against, and its one canonical spelling, which hooks and Docker receive.
//! - [`streaming`]: which Docker answers are streams (never buffered, never post-hooked).
//! - [`upstream`]: the client to Docker: a connection per client connection, and a small
//!   pool for the proxy's own calls.
//! - [`error`]: every failure, and the one function that turns it into a Docker-shaped
//!   response.
//!
//! The proxy knows no adapter by name: binaries register their in-process adapters in a
//! [`Builtins`] and adapters implement [`powerstrip_adapter::Adapter`].
#![forbid(unsafe_code)]

pub mod admin;
mod body;
pub mod chains;
mod connect;
pub mod error;
pub mod events;
#[cfg(feature = "fuzzing")]
#[doc(hidden)]
pub mod fuzzing;
mod h1;
mod headers;
pub mod http_adapter;
pub mod metrics;
pub mod proxy;
pub mod reload;
pub mod server;
pub mod streaming;
pub mod target;
pub mod upstream;

pub use body::ProxyBody;
pub use chains::{Builtins, ChainOptions, Chains};
pub use error::ProxyError;
pub use h1::{H1Error, UpstreamBody};
pub use powerstrip_adapter::net::{Address, BindError, Listener, ServerOptions};
pub use proxy::{Limits, Proxy};
pub use server::serve;
pub use upstream::Upstream;

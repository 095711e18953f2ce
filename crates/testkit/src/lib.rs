//! # Powerstrip test support
//!
//! Fakes for both sides of the proxy, and a client to poke them with, for the proxy's own
//! integration tests and for adapter authors. Every server binds `127.0.0.1:0` or a unix
//! socket in its own temporary directory, runs on the caller's tokio runtime, and stops
//! (closing its connections and removing its socket) when its handle is dropped: no fixed
//! ports, no globals, tests run in parallel.
//!
//! # Layout
//! - [`docker`]: [`FakeDocker`], a scriptable Docker daemon (JSON, echo, chunked streams,
//!   `101` raw-stream upgrades with half-close, hangs, 404s, raw garbage) that records
//!   every [`RecordedRequest`] it receives.
//! - [`adapter`]: [`FakeAdapter`], a scriptable PowerstripProtocolVersion 1 adapter over
//!   HTTP that records every call, with ready-made behaviours (echo, add to a field,
//!   refuse) and broken ones ([`AdapterReply`]: hang, close mid-answer, wrong JSON).
//! - [`client`]: [`TestClient`], a small HTTP/1.1 client over a unix socket or TCP, one
//!   connection per request, returning whole [`TestResponse`]s, streamed responses, or
//!   upgraded two-way streams.
//! - [`body`]: [`ChannelBody`], a body fed chunk by chunk from a channel, and
//!   [`next_chunk`] to read one as it arrives.
//! - [`net`]: [`Address`] (`unix:///path`, `tcp://IP:PORT`) and [`connect`].
//! - [`conformance`]: checks any HTTP adapter against PowerstripProtocolVersion 1 and
//!   reports what it got wrong (`powerstrip conformance URL`).
//! - [`proxy`]: [`TestProxy`], the real proxy in-process, configured from TOML or YAML text,
//!   with in-process adapters if the test registers them.
#![forbid(unsafe_code)]

pub mod adapter;
pub mod body;
pub mod client;
pub mod conformance;
pub mod docker;
pub mod net;
pub mod proxy;

pub use adapter::{AdapterReply, FakeAdapter};
pub use body::{ChannelBody, next_chunk};
pub use client::{TestClient, TestResponse, UpgradedIo};
pub use docker::{FakeDocker, FakeResponse, RecordedRequest, Responder};
pub use net::{Address, connect};
pub use proxy::{TestProxy, TestProxyBuilder};

//! `null`: passes everything through unchanged — the smallest adapter there is.
//!
//! It implements nothing: every method of [`Adapter`] defaults to "pass". Hooked on an
//! endpoint it measures what a chain costs by itself (the benchmarks use it), and it is
//! the template to start from.
//!
//! ```
//! use powerstrip_adapter::{Adapter, ClientRequest};
//! use powerstrip_examples::null::Null;
//!
//! # #[tokio::main(flavor = "current_thread")] async fn main() {
//! let request = ClientRequest::new("GET", "/v1.41/version", None);
//! assert_eq!(Null.pre_hook(request.clone()).await.unwrap(), request);
//! # }
//! ```

use std::sync::Arc;

use powerstrip_adapter::Adapter;
use powerstrip_adapter::builtin::Builtin;

/// Passes every request and response through unchanged.
#[derive(Clone, Copy, Debug, Default)]
pub struct Null;

impl Adapter for Null {}

/// `null` as a builtin: `{ builtin = "null" }`; it takes no options.
pub fn builtin() -> Builtin {
    Builtin::new(
        "null",
        "passes everything through unchanged (a template, and a yardstick)",
        |options, _ctx| match options.keys().next() {
            Some(key) => Err(format!("takes no options, got {key:?}")),
            None => Ok(Arc::new(Null)),
        },
    )
}

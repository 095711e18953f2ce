//! `slowreq`: delays every request it hooks by a configured duration.
//!
//! The smallest useful adapter: one pre-hook, one option. Hook it on
//! `POST /*/containers/create` and `docker create` takes that much longer — handy to see a
//! chain at work, or to test how clients cope with a slow daemon.
//!
//! ```
//! use std::time::{Duration, Instant};
//! use powerstrip_adapter::{Adapter, ClientRequest};
//! use powerstrip_examples::slowreq::SlowReq;
//!
//! # #[tokio::main(flavor = "current_thread")] async fn main() {
//! let slow = SlowReq::new(Duration::from_millis(20));
//! let request = ClientRequest::new("POST", "/v1.41/containers/create", Some("{}".into()));
//! let started = Instant::now();
//! assert_eq!(slow.pre_hook(request.clone()).await.unwrap(), request);
//! assert!(started.elapsed() >= Duration::from_millis(20));
//! # }
//! ```

use std::sync::Arc;
use std::time::Duration;

use powerstrip_adapter::builtin::{Builtin, duration, parse_options};
use powerstrip_adapter::{Adapter, ClientRequest, HookError, async_trait};
use serde::Deserialize;

/// Delays each request it hooks, then passes it on unchanged.
#[derive(Clone, Copy, Debug)]
pub struct SlowReq {
    /// How long each hooked request waits.
    delay: Duration,
}

impl SlowReq {
    /// Delays each hooked request by `delay`.
    pub fn new(delay: Duration) -> Self {
        SlowReq { delay }
    }
}

#[async_trait]
impl Adapter for SlowReq {
    async fn pre_hook(&self, request: ClientRequest) -> Result<ClientRequest, HookError> {
        tokio::time::sleep(self.delay).await;
        Ok(request)
    }
}

/// `slowreq`'s options.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Options {
    #[serde(with = "duration", default = "default_delay")]
    delay: Duration,
}

fn default_delay() -> Duration {
    Duration::from_secs(1)
}

/// `slowreq` as a builtin: `{ builtin = "slowreq", delay = "500ms" }`.
pub fn builtin() -> Builtin {
    Builtin::new(
        "slowreq",
        "delays every request it hooks",
        |options, _ctx| {
            let options: Options = parse_options(options)?;
            Ok(Arc::new(SlowReq::new(options.delay)))
        },
    )
    .option(
        "delay",
        "duration",
        Some("1s"),
        "how long each hooked request waits",
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn options_are_checked() {
        let mut options = powerstrip_adapter::builtin::Options::new();
        assert!(
            builtin()
                .build(&options, &powerstrip_adapter::Context::in_memory())
                .is_ok(),
            "delay has a default"
        );
        options.insert("delay".into(), "soon".into());
        let err = builtin()
            .build(&options, &powerstrip_adapter::Context::in_memory())
            .err()
            .unwrap();
        assert!(err.contains("bad duration \"soon\""), "{err}");
    }
}

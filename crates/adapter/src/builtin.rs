//! In-process adapters: how an adapter crate describes itself so that a binary can link
//! it (`builtin = "name"` in `adapters.toml`) or serve it over HTTP ([`crate::cli`]), built
//! from the same options either way.
//!
//! ```
//! use std::sync::Arc;
//! use std::time::Duration;
//! use powerstrip_adapter::builtin::{Builtin, duration, parse_options};
//! use powerstrip_adapter::{async_trait, Adapter, ClientRequest, HookError};
//!
//! struct Pause(Duration);
//!
//! #[async_trait]
//! impl Adapter for Pause {
//!     async fn pre_hook(&self, request: ClientRequest) -> Result<ClientRequest, HookError> {
//!         tokio::time::sleep(self.0).await;
//!         Ok(request)
//!     }
//! }
//!
//! #[derive(serde::Deserialize)]
//! #[serde(deny_unknown_fields)]
//! struct Options {
//!     #[serde(with = "duration")]
//!     delay: Duration,
//! }
//!
//! let pause = Builtin::new("pause", "waits before each hooked request", |options, _ctx| {
//!     let options: Options = parse_options(options)?;
//!     Ok(Arc::new(Pause(options.delay)))
//! })
//! .option("delay", "duration", None, "how long to wait");
//!
//! let ctx = powerstrip_adapter::Context::in_memory();
//! let mut options = serde_json::Map::new();
//! options.insert("delay".into(), "5ms".into());
//! assert!(pause.build(&options, &ctx).is_ok());
//! options.insert("dleay".into(), "5ms".into());
//! let error = pause.build(&options, &ctx).err().unwrap_or_default();
//! assert!(error.contains("unknown field `dleay`"), "{error}");
//! ```

use std::fmt;
use std::sync::Arc;

use serde::de::DeserializeOwned;

use crate::{Adapter, Context};

/// An adapter's options as the operator wrote them (the keys of its table in
/// `adapters.toml` besides `builtin`, `timeout` and `failure`).
pub type Options = serde_json::Map<String, serde_json::Value>;

/// Builds an adapter from its options and the [`Context`] it runs in, or says what is wrong
/// with the options.
pub type Factory =
    Arc<dyn Fn(&Options, &Context) -> Result<Arc<dyn Adapter>, String> + Send + Sync>;

/// An adapter a binary can link: its name, what it does, its options, and how to build it.
#[derive(Clone)]
pub struct Builtin {
    /// The name configurations use (`builtin = "image-policy"`).
    name: String,
    /// One line on what it does, for `powerstrip adapters` and `--help`.
    summary: String,
    /// Its options, documented.
    options: Vec<OptionDoc>,
    /// Builds an instance from options.
    factory: Factory,
    /// Whether its adapters implement [`Adapter::unwind`]: the proxy keeps a copy of the
    /// request for unwinding only for those.
    unwinds: bool,
}

/// One documented option of a [`Builtin`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct OptionDoc {
    /// The key in the adapter's table.
    pub name: String,
    /// What kind of value: `duration`, `list of strings`, `bool`, `path`...
    pub kind: String,
    /// The default, or `None` when the option is required.
    pub default: Option<String>,
    /// What it does.
    pub doc: String,
}

impl Builtin {
    /// A builtin named `name` built by `factory`.
    pub fn new<F>(name: impl Into<String>, summary: impl Into<String>, factory: F) -> Self
    where
        F: Fn(&Options, &Context) -> Result<Arc<dyn Adapter>, String> + Send + Sync + 'static,
    {
        Builtin {
            name: name.into(),
            summary: summary.into(),
            options: Vec::new(),
            factory: Arc::new(factory),
            unwinds: false,
        }
    }

    /// A builtin that is this one instance and takes no options (handy in tests). It is
    /// told of unwinds, in case it implements them.
    pub fn from_adapter(name: impl Into<String>, adapter: impl Adapter) -> Self {
        let adapter: Arc<dyn Adapter> = Arc::new(adapter);
        Builtin::new(name, "an adapter instance", move |options, _ctx| {
            if let Some(key) = options.keys().next() {
                return Err(format!("takes no options, got {key:?}"));
            }
            Ok(adapter.clone())
        })
        .with_unwind()
    }

    /// Declares that its adapters implement [`Adapter::unwind`], so the proxy calls it when
    /// a request they pre-hooked does not take effect. Without it, unwinds are not sent
    /// (and the proxy keeps no copy of the request to send with them).
    pub fn with_unwind(mut self) -> Self {
        self.unwinds = true;
        self
    }

    /// Whether its adapters are told of unwinds.
    pub fn unwinds(&self) -> bool {
        self.unwinds
    }

    /// Documents an option (`default: None` means required).
    pub fn option(
        mut self,
        name: impl Into<String>,
        kind: impl Into<String>,
        default: Option<&str>,
        doc: impl Into<String>,
    ) -> Self {
        self.options.push(OptionDoc {
            name: name.into(),
            kind: kind.into(),
            default: default.map(str::to_owned),
            doc: doc.into(),
        });
        self
    }

    /// The name configurations use.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// One line on what it does.
    pub fn summary(&self) -> &str {
        &self.summary
    }

    /// Its documented options.
    pub fn options(&self) -> &[OptionDoc] {
        &self.options
    }

    /// Builds an instance from `options`.
    pub fn build(&self, options: &Options, ctx: &Context) -> Result<Arc<dyn Adapter>, String> {
        (self.factory)(options, ctx)
    }

    /// A human description: the summary, then one line per option.
    pub fn describe(&self) -> String {
        let mut out = format!("{}: {}\n", self.name, self.summary);
        if self.options.is_empty() {
            out.push_str("  (no options)\n");
        }
        for option in &self.options {
            let default = match &option.default {
                Some(default) => format!("default {default}"),
                None => "required".to_owned(),
            };
            out.push_str(&format!(
                "  {:<12} {} ({default}): {}\n",
                option.name, option.kind, option.doc
            ));
        }
        out
    }
}

impl fmt::Debug for Builtin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Builtin")
            .field("name", &self.name)
            .field("options", &self.options)
            .finish_non_exhaustive()
    }
}

/// Deserialises options into `T`; errors name the option (serde's `unknown field`,
/// `missing field`, `invalid type` messages).
pub fn parse_options<T: DeserializeOwned>(options: &Options) -> Result<T, String> {
    serde_json::from_value(serde_json::Value::Object(options.clone())).map_err(|e| e.to_string())
}

/// `#[serde(with = "duration")]` for options written as `"500ms"`, `"2s"`, `"1m"`.
pub mod duration {
    use std::time::Duration;

    use serde::{Deserialize, Deserializer, Serializer, de::Error};

    /// Reads a humantime duration string.
    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        let text = String::deserialize(d)?;
        humantime::parse_duration(&text)
            .map_err(|e| D::Error::custom(format!("bad duration {text:?}: {e} (e.g. 500ms, 2s)")))
    }

    /// Writes a humantime duration string.
    pub fn serialize<S: Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&humantime::format_duration(*d).to_string())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Nothing;
    impl Adapter for Nothing {}

    #[test]
    fn describe_lists_options_with_defaults() {
        let builtin = Builtin::new("x", "does x", |_, _| Ok(Arc::new(Nothing)))
            .option("delay", "duration", Some("1s"), "how long")
            .option("allow", "list of strings", None, "what is allowed");
        assert_eq!(
            builtin.describe(),
            "x: does x\n  delay        duration (default 1s): how long\n  allow        list of strings (required): what is allowed\n"
        );
    }

    #[test]
    fn an_instance_takes_no_options() {
        let builtin = Builtin::from_adapter("fixed", Nothing);
        assert!(
            builtin
                .build(&Options::new(), &crate::Context::in_memory())
                .is_ok()
        );
        let mut options = Options::new();
        options.insert("x".into(), 1.into());
        assert_eq!(
            builtin
                .build(&options, &crate::Context::in_memory())
                .err()
                .unwrap(),
            "takes no options, got \"x\""
        );
    }
}

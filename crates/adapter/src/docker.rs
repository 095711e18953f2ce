//! Lossless views of the Docker request bodies adapters most often touch.
//!
//! Adapters written for the original Powerstrip read a body into a partial struct and wrote
//! that struct back, silently dropping every field the struct did not know (and every field
//! Docker added later). A view here instead **wraps the whole document** (a
//! [`serde_json::Map`]) and offers typed getters and setters over it. Whatever a hook does
//! not touch comes out as it went in: values, `null` versus absent keys, unknown and nested
//! unknown fields, and key order (the workspace builds `serde_json` with `preserve_order`).
//! Numbers are re-printed by `serde_json` (`1e3` comes out as `1000.0`); integers, which is
//! what Docker sends, come out unchanged.
//!
//! ## Reading and writing
//! - **Getters never fail.** They show what Docker will read: a field that is absent, `null`
//!   or of the wrong shape reads as `None` or empty, as each getter documents. The exceptions
//!   are [`ContainerCreate::binds`] and [`ContainerCreate::mounts`], which return a `Result`:
//!   their results are meant to be edited and written back, and a lenient reader that skipped
//!   an entry it could not parse would make that write-back drop it.
//! - **Mutators never overwrite what they do not understand.** A mutator that edits inside a
//!   field (`set_env_var`, `set_label`, `add_bind`, anything under `HostConfig`) refuses with
//!   a `400` [`HookError`] naming the field and its bad value when that field has the wrong
//!   shape, and leaves the document unchanged. Setters that replace a whole field
//!   (`set_image`, `set_cmd`, `set_binds`, …) replace it whatever it held.
//!
//! ## Reading like Docker does
//! Docker decodes these bodies with Go's `encoding/json`, which matches object keys to
//! struct fields **case-insensitively** (`"image"` sets `Image`) and **merges** repeated
//! objects. A policy that read the body differently from Docker could be walked around
//! (`{"Image":"allowed","image":"evil"}`), so:
//! - [`parse_object`] refuses a body with a repeated key at any depth;
//! - [`ContainerCreate::parse`] also refuses two spellings of one field (`User` and `user`)
//!   at the top level, in `HostConfig` and in each `HostConfig.Mounts` entry;
//! - every getter finds its field the way Go does ([`field`]), and every setter writes to the
//!   spelling already present (a new field gets Docker's own spelling).
//!
//! ```
//! use powerstrip_adapter::docker::{Bind, ContainerCreate};
//! use powerstrip_adapter::{ClientRequest, HookError};
//!
//! /// Refuses root containers, tags the rest and mounts a volume into them.
//! fn pre_hook(mut request: ClientRequest) -> Result<ClientRequest, HookError> {
//!     let mut create = ContainerCreate::from_request(&request)?;
//!     if create.runs_as_root() {
//!         return Err(HookError::forbidden("set a non-root User (docker run --user)"));
//!     }
//!     create.set_label("com.example.checked", "yes")?;
//!     create.add_bind(Bind::new("cache", "/var/cache/app"))?;
//!     create.write_to(&mut request);
//!     Ok(request)
//! }
//!
//! let request = ClientRequest::new(
//!     "POST",
//!     "/v1.41/containers/create",
//!     Some(r#"{"User":"1000","Image":"busybox","XFuture":{"kept":[null]}}"#.into()),
//! );
//! let request = pre_hook(request)?;
//! assert_eq!(
//!     request.body.as_deref(),
//!     Some(concat!(
//!         r#"{"User":"1000","Image":"busybox","XFuture":{"kept":[null]},"#,
//!         r#""Labels":{"com.example.checked":"yes"},"HostConfig":{"Binds":["cache:/var/cache/app"]}}"#,
//!     ))
//! );
//! # Ok::<(), HookError>(())
//! ```

use std::collections::HashSet;
use std::fmt;

use serde::de::{self, Deserializer, MapAccess, SeqAccess, Visitor};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use crate::{ClientRequest, HookError};

/// How errors name the container create body.
const CONTAINER_CREATE: &str = "container create request";

/// Parses a request or response body that must be a JSON object, for bodies this module has
/// no view of (`/services/create`, `/networks/create`, …).
///
/// `what` names the body in errors: `parse_object(None, "network create request")` fails
/// with `400 network create request has no body`. Also refuses (`400`) invalid JSON, a
/// value that is not an object, and a repeated key at any depth (Docker would merge or
/// overwrite it, so a hook could not see what Docker will do).
pub fn parse_object(body: Option<&str>, what: &str) -> Result<Map<String, Value>, HookError> {
    let body = body.ok_or_else(|| HookError::bad_request(format!("{what} has no body")))?;
    let value: Value = serde_json::from_str(body)
        .map_err(|e| HookError::bad_request(format!("{what} body is not valid JSON: {e}")))?;
    // A second pass over the text: `Value` keeps only the last of repeated keys.
    serde_json::from_str::<NoRepeatedKeys>(body)
        .map_err(|e| HookError::bad_request(format!("{what} body has a {e}")))?;
    match value {
        Value::Object(object) => Ok(object),
        other => Err(HookError::bad_request(format!(
            "{what} body must be a JSON object, got {}",
            describe(&other)
        ))),
    }
}

/// The value of struct field `name` in `object`, found the way Docker's Go decoder finds it:
/// keys match case-insensitively (`"user"` sets `User`), and of several matching keys the
/// last one wins.
///
/// Use it when reading fields this module has no getter for, e.g.
/// `field(create.host_config()?, "Privileged")`. (Not for map-like objects such as `Labels`,
/// whose keys Docker matches exactly.)
pub fn field<'m>(object: &'m Map<String, Value>, name: &str) -> Option<&'m Value> {
    key_of(object, name).and_then(|key| object.get(key))
}

/// A `POST /containers/create` body: the container's configuration (`Image`, `Env`,
/// `Cmd`, …), its `HostConfig` and its `NetworkingConfig`, kept whole.
///
/// Build it with [`ContainerCreate::from_request`] in a pre-hook, edit it, and put it back
/// with [`ContainerCreate::write_to`]. See the [module documentation](self) for what is
/// kept and how malformed fields are treated.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct ContainerCreate {
    /// The whole body; every getter and setter reads and edits it in place, so nothing
    /// the view has no accessor for is ever lost.
    document: Map<String, Value>,
}

impl ContainerCreate {
    /// Parses a container create body.
    ///
    /// Refuses (`400`, worded for the docker user) invalid JSON, a body that is not an
    /// object, a repeated key, and two spellings of one field that Docker would read as the
    /// same (see the [module documentation](self)). Fields are otherwise not checked here:
    /// a hook that only adds a label does not refuse a body whose `Env` it never reads.
    pub fn parse(body: &str) -> Result<Self, HookError> {
        let document = parse_object(Some(body), CONTAINER_CREATE)?;
        check_spellings(&document)?;
        Ok(ContainerCreate { document })
    }

    /// Parses the body of a container create request; a request without a body is refused
    /// with `400 container create request has no body`.
    pub fn from_request(request: &ClientRequest) -> Result<Self, HookError> {
        match request.body.as_deref() {
            Some(body) => Self::parse(body),
            None => Err(HookError::bad_request(format!(
                "{CONTAINER_CREATE} has no body"
            ))),
        }
    }

    /// Wraps a document as it is, without the checks [`ContainerCreate::parse`] makes.
    pub fn from_json(document: Map<String, Value>) -> Self {
        ContainerCreate { document }
    }

    /// The body as compact JSON text, keys in their original order.
    pub fn to_body(&self) -> String {
        // Serialising a map of `Value`s cannot fail: its keys are strings and a `Value`
        // holds no non-finite number.
        serde_json::to_string(&self.document).unwrap_or_default()
    }

    /// Replaces `request.body` with this body (the proxy recomputes `Content-Length`).
    pub fn write_to(&self, request: &mut ClientRequest) {
        request.body = Some(self.to_body());
    }

    /// The whole document, for fields this view has no accessor for (see also [`field`]).
    pub fn as_json(&self) -> &Map<String, Value> {
        &self.document
    }

    /// The whole document, mutably. Edits here are kept as made; remove keys with
    /// `shift_remove` to keep the order of the others.
    pub fn as_json_mut(&mut self) -> &mut Map<String, Value> {
        &mut self.document
    }

    /// The whole document, by value.
    pub fn into_json(self) -> Map<String, Value> {
        self.document
    }

    // --- Image --------------------------------------------------------------------------

    /// `Image`: the image reference as the client sent it (`busybox`, `busybox:1.36`,
    /// `registry:5000/team/app@sha256:…`). `None` when absent, `null` or not a string.
    pub fn image(&self) -> Option<&str> {
        field(&self.document, "Image")?.as_str()
    }

    /// Sets `Image`.
    pub fn set_image(&mut self, image: impl Into<String>) {
        set_field(&mut self.document, "Image", Value::String(image.into()));
    }

    // --- User ---------------------------------------------------------------------------

    /// `User`: `user`, `uid`, `user:group` or `uid:gid`; `""` means the image's user.
    /// `None` when absent, `null` or not a string.
    pub fn user(&self) -> Option<&str> {
        field(&self.document, "User")?.as_str()
    }

    /// Sets `User` (`"1000"`, `"1000:1000"`, `"app"`).
    pub fn set_user(&mut self, user: impl Into<String>) {
        set_field(&mut self.document, "User", Value::String(user.into()));
    }

    /// Whether the container may run as root, for policies. Fails closed: true when `User`
    /// is absent, `null` or `""` (the image's `USER` applies, which this body cannot show;
    /// for most images it is root), when its user part (before any `:`) is `root` or a
    /// number equal to 0 (`0`, `00`, `0:0`, `root:wheel`), and when `User` is not a string
    /// (Docker refuses such a body anyway).
    ///
    /// A user *named* otherwise may still have uid 0 in the image's `/etc/passwd`; a policy
    /// that must rule that out has to require a numeric non-zero uid.
    pub fn runs_as_root(&self) -> bool {
        match field(&self.document, "User") {
            Some(Value::String(user)) => {
                let name = user.split_once(':').map_or(user.as_str(), |(name, _)| name);
                name.is_empty() || name == "root" || name.parse::<i64>() == Ok(0)
            }
            _ => true,
        }
    }

    // --- Env ----------------------------------------------------------------------------

    /// `Env`, in order: `("KEY", Some("VALUE"))` for `KEY=VALUE`, `("KEY", None)` for a bare
    /// `KEY` (Docker then unsets `KEY`). Empty when `Env` is absent, `null` or not a list;
    /// entries that are not strings are skipped.
    pub fn env(&self) -> Vec<(&str, Option<&str>)> {
        self.env_entries()
            .filter_map(Value::as_str)
            .map(split_env)
            .collect()
    }

    /// The value of the first `key=VALUE` entry in `Env` (a bare `key` has no value).
    /// Keys are case-sensitive.
    pub fn env_var(&self, key: &str) -> Option<&str> {
        self.env()
            .into_iter()
            .find_map(|(name, value)| if name == key { value } else { None })
    }

    /// Sets `key=value` in `Env`: the first entry for `key` (`key=…` or a bare `key`) is
    /// replaced in place and any later ones removed, so `key` ends up with exactly this
    /// value; otherwise the entry is appended. An absent or `null` `Env` becomes a list.
    ///
    /// Refuses (`400`) an `Env` that is not a list of strings. A `key` that is empty or
    /// contains `=` is a bug in the hook: [`HookError::failed`].
    pub fn set_env_var(&mut self, key: &str, value: &str) -> Result<(), HookError> {
        if key.is_empty() || key.contains('=') {
            return Err(HookError::failed(format!(
                "adapter bug: {key:?} is not an environment variable name"
            )));
        }
        let entry = Value::String(format!("{key}={value}"));
        let list = self.env_mut()?;
        let mut matching = (0..list.len()).filter(|&i| env_key(&list[i]) == Some(key));
        match matching.next() {
            Some(first) => {
                let later: Vec<usize> = matching.collect();
                list[first] = entry;
                for i in later.into_iter().rev() {
                    list.remove(i);
                }
            }
            None => list.push(entry),
        }
        Ok(())
    }

    /// Removes every entry for `key` from `Env` and returns the first value among them
    /// (`None` when there was none, or only a bare `key`). An absent or `null` `Env` is left
    /// as it is; refuses (`400`) an `Env` that is not a list of strings.
    pub fn remove_env_var(&mut self, key: &str) -> Result<Option<String>, HookError> {
        if is_absent(field(&self.document, "Env")) {
            return Ok(None);
        }
        let list = self.env_mut()?;
        let mut removed = None;
        list.retain(|entry| match entry.as_str().map(split_env) {
            Some((name, value)) if name == key => {
                if removed.is_none() {
                    removed = value.map(str::to_owned);
                }
                false
            }
            _ => true,
        });
        Ok(removed)
    }

    fn env_entries(&self) -> std::slice::Iter<'_, Value> {
        match field(&self.document, "Env") {
            Some(Value::Array(list)) => list.iter(),
            _ => [].iter(),
        }
    }

    /// `Env` as a list to edit, created when absent or `null`. `null` entries (which Go
    /// reads as `""`, a no-op) are tolerated and kept.
    fn env_mut(&mut self) -> Result<&mut Vec<Value>, HookError> {
        list_mut(
            &mut self.document,
            "Env",
            "Env",
            "a list of \"KEY=VALUE\" strings",
            |entry| entry.is_string() || entry.is_null(),
        )
    }

    // --- Labels -------------------------------------------------------------------------

    /// `Labels`, in the order sent. A `null` value reads as `""` (as Docker reads it);
    /// other non-string values are skipped. Empty when `Labels` is absent, `null` or not an
    /// object.
    pub fn labels(&self) -> Vec<(&str, &str)> {
        self.labels_object()
            .map(|labels| {
                labels
                    .iter()
                    .filter_map(|(key, value)| Some((key.as_str(), label_value(value)?)))
                    .collect()
            })
            .unwrap_or_default()
    }

    /// The label `key` (label keys are case-sensitive); a `null` value reads as `""`.
    pub fn label(&self, key: &str) -> Option<&str> {
        label_value(self.labels_object()?.get(key)?)
    }

    /// Sets label `key` (in place if present, else appended). An absent or `null` `Labels`
    /// becomes an object; refuses (`400`) a `Labels` that is not an object of strings.
    pub fn set_label(&mut self, key: &str, value: &str) -> Result<(), HookError> {
        self.labels_mut()?
            .insert(key.to_owned(), Value::String(value.to_owned()));
        Ok(())
    }

    /// Removes label `key`, keeping the others in order, and returns its value. An absent
    /// or `null` `Labels` is left as it is; refuses (`400`) a `Labels` that is not an object
    /// of strings.
    pub fn remove_label(&mut self, key: &str) -> Result<Option<String>, HookError> {
        if is_absent(field(&self.document, "Labels")) {
            return Ok(None);
        }
        let removed = self.labels_mut()?.shift_remove(key);
        Ok(removed.as_ref().and_then(label_value).map(str::to_owned))
    }

    fn labels_object(&self) -> Option<&Map<String, Value>> {
        field(&self.document, "Labels")?.as_object()
    }

    fn labels_mut(&mut self) -> Result<&mut Map<String, Value>, HookError> {
        object_mut(
            &mut self.document,
            "Labels",
            "Labels",
            "an object of strings",
            |value| label_value(value).is_some(),
        )
    }

    // --- Cmd and Entrypoint -------------------------------------------------------------

    /// `Cmd`: the list as sent, or a string (the shell form older clients send) as one
    /// element, which is how Docker reads it. `None` when absent, `null` or of another
    /// shape. `Some(vec![])` (an empty list) and `None` both mean "the image's `CMD`".
    pub fn cmd(&self) -> Option<Vec<&str>> {
        str_slice(field(&self.document, "Cmd")?)
    }

    /// Sets `Cmd` to a list.
    pub fn set_cmd<I, S>(&mut self, cmd: I)
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        set_field(&mut self.document, "Cmd", string_list(cmd));
    }

    /// `Entrypoint`, read like [`ContainerCreate::cmd`]. Unlike `Cmd`, `null` (the image's
    /// entrypoint) differs from `[""]` (no entrypoint, `docker run --entrypoint ""`).
    pub fn entrypoint(&self) -> Option<Vec<&str>> {
        str_slice(field(&self.document, "Entrypoint")?)
    }

    /// Sets `Entrypoint` to a list. (For `null`, the image's entrypoint, use
    /// [`ContainerCreate::as_json_mut`].)
    pub fn set_entrypoint<I, S>(&mut self, entrypoint: I)
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        set_field(&mut self.document, "Entrypoint", string_list(entrypoint));
    }

    // --- HostConfig ---------------------------------------------------------------------

    /// `HostConfig`, for fields this view has no accessor for (read them with [`field`]).
    /// `None` when absent, `null` or not an object.
    pub fn host_config(&self) -> Option<&Map<String, Value>> {
        field(&self.document, "HostConfig")?.as_object()
    }

    /// `HostConfig` to edit, created (as `{}`) when absent or `null`. Refuses (`400`) a
    /// `HostConfig` that is not an object.
    pub fn host_config_mut(&mut self) -> Result<&mut Map<String, Value>, HookError> {
        object_mut(
            &mut self.document,
            "HostConfig",
            "HostConfig",
            "an object",
            |_| true,
        )
    }

    /// `HostConfig.Binds`, parsed. Empty when `HostConfig` or `Binds` is absent or `null`.
    ///
    /// Unlike the other getters this one refuses (`400`) a `Binds` that is not a list of
    /// strings or holds an entry [`Bind::parse`] refuses: the result is meant to be edited
    /// and given to [`ContainerCreate::set_binds`], which would otherwise drop the entries
    /// that could not be shown.
    pub fn binds(&self) -> Result<Vec<Bind>, HookError> {
        let Some(binds) = self.host_config().and_then(|hc| field(hc, "Binds")) else {
            return Ok(Vec::new());
        };
        match binds {
            Value::Null => Ok(Vec::new()),
            Value::Array(entries) => entries
                .iter()
                .map(|entry| match entry {
                    Value::String(entry) => Bind::parse(entry),
                    other => Err(HookError::bad_request(format!(
                        "HostConfig.Binds entry must be a \"source:target[:options]\" string, got {}",
                        describe(other)
                    ))),
                })
                .collect(),
            other => Err(HookError::bad_request(format!(
                "HostConfig.Binds must be a list of \"source:target[:options]\" strings, got {}",
                describe(other)
            ))),
        }
    }

    /// Replaces `HostConfig.Binds` (creating `HostConfig` if needed). Refuses (`400`) a
    /// `HostConfig` that is not an object.
    pub fn set_binds(&mut self, binds: impl IntoIterator<Item = Bind>) -> Result<(), HookError> {
        let binds = binds
            .into_iter()
            .map(|bind| Value::String(bind.to_string()))
            .collect();
        set_field(self.host_config_mut()?, "Binds", Value::Array(binds));
        Ok(())
    }

    /// Appends one entry to `HostConfig.Binds` (creating `HostConfig` and `Binds` if
    /// needed), leaving the other entries as they are. Refuses (`400`) a `HostConfig` that is
    /// not an object or a `Binds` that is not a list.
    pub fn add_bind(&mut self, bind: Bind) -> Result<(), HookError> {
        list_mut(
            self.host_config_mut()?,
            "Binds",
            "HostConfig.Binds",
            "a list of \"source:target[:options]\" strings",
            |_| true,
        )?
        .push(Value::String(bind.to_string()));
        Ok(())
    }

    /// `HostConfig.Mounts`, parsed. Empty when `HostConfig` or `Mounts` is absent or `null`.
    /// Refuses (`400`) what [`Mount::from_json`] refuses, for the reason given at
    /// [`ContainerCreate::binds`].
    pub fn mounts(&self) -> Result<Vec<Mount>, HookError> {
        match self.host_config().and_then(|hc| field(hc, "Mounts")) {
            None | Some(Value::Null) => Ok(Vec::new()),
            Some(Value::Array(entries)) => entries.iter().map(Mount::from_json).collect(),
            Some(other) => Err(HookError::bad_request(format!(
                "HostConfig.Mounts must be a list of objects, got {}",
                describe(other)
            ))),
        }
    }

    /// Replaces `HostConfig.Mounts` (creating `HostConfig` if needed). A mount equal to one
    /// already there is written back exactly as it was sent (key order, `null`s); a new or
    /// changed one is written with `Type`, `Source`, `Target`, `ReadOnly` first, then its
    /// other keys. Refuses (`400`) a `HostConfig` that is not an object.
    pub fn set_mounts(&mut self, mounts: impl IntoIterator<Item = Mount>) -> Result<(), HookError> {
        let host_config = self.host_config_mut()?;
        let mut sent: Vec<Option<(Mount, Value)>> = match field(host_config, "Mounts") {
            Some(Value::Array(entries)) => entries
                .iter()
                .filter_map(|entry| Some(Some((Mount::from_json(entry).ok()?, entry.clone()))))
                .collect(),
            _ => Vec::new(),
        };
        let mut written = Vec::new();
        for mount in mounts {
            let unchanged = sent
                .iter_mut()
                .find(|slot| slot.as_ref().is_some_and(|(was, _)| *was == mount))
                .and_then(Option::take);
            written.push(match unchanged {
                Some((_, original)) => original,
                None => mount.to_json()?,
            });
        }
        set_field(host_config, "Mounts", Value::Array(written));
        Ok(())
    }

    /// Appends one entry to `HostConfig.Mounts` (creating `HostConfig` and `Mounts` if
    /// needed), leaving the other entries as they are. Refuses (`400`) a `HostConfig` that is
    /// not an object or a `Mounts` that is not a list.
    pub fn add_mount(&mut self, mount: Mount) -> Result<(), HookError> {
        let mount = mount.to_json()?;
        list_mut(
            self.host_config_mut()?,
            "Mounts",
            "HostConfig.Mounts",
            "a list of objects",
            |_| true,
        )?
        .push(mount);
        Ok(())
    }

    /// `HostConfig.NetworkMode` (`default`, `bridge`, `host`, `none`, `container:<id>` or a
    /// network name). `None` when absent, `null` or not a string.
    pub fn network_mode(&self) -> Option<&str> {
        field(self.host_config()?, "NetworkMode")?.as_str()
    }

    /// Sets `HostConfig.NetworkMode` (creating `HostConfig` if needed). Refuses (`400`) a
    /// `HostConfig` that is not an object.
    pub fn set_network_mode(&mut self, mode: impl Into<String>) -> Result<(), HookError> {
        set_field(
            self.host_config_mut()?,
            "NetworkMode",
            Value::String(mode.into()),
        );
        Ok(())
    }
}

/// One `HostConfig.Binds` entry, `source:target[:options]`, as the Linux daemon reads it:
/// `/srv/data:/data:ro`, `myVol@gold:/data`.
///
/// [`Bind::parse`] and [`Display`](fmt::Display) round-trip exactly: `options` is everything
/// after the second `:`, unparsed (`ro`, `rw,z`, `nocopy`, …).
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Bind {
    /// A host path (starts with `/`) or a volume name (anything else, e.g. `myVol@gold`).
    pub source: String,
    /// The path inside the container.
    pub target: String,
    /// Comma-separated options after the second `:`, kept as sent; `None` when there is no
    /// second `:` (`Some("")` for a trailing one).
    pub options: Option<String>,
}

impl Bind {
    /// A bind without options.
    pub fn new(source: impl Into<String>, target: impl Into<String>) -> Self {
        Bind {
            source: source.into(),
            target: target.into(),
            options: None,
        }
    }

    /// Parses one entry. Refuses (`400`, quoting the entry) one with no `:` or an empty
    /// source or target.
    ///
    /// (Docker also accepts a lone absolute container path, `/data`, as an anonymous volume;
    /// this type has no source to give it, so such an entry is refused here too. The docker
    /// CLI sends those as `Volumes`, not `Binds`.)
    pub fn parse(entry: &str) -> Result<Bind, HookError> {
        let mut parts = entry.splitn(3, ':');
        let (source, target) = (parts.next().unwrap_or_default(), parts.next());
        match target {
            Some(target) if !source.is_empty() && !target.is_empty() => Ok(Bind {
                source: source.to_owned(),
                target: target.to_owned(),
                options: parts.next().map(str::to_owned),
            }),
            _ => Err(HookError::bad_request(format!(
                "HostConfig.Binds entry {entry:?} is not of the form source:target[:options]"
            ))),
        }
    }

    /// True when `source` names a volume rather than a host path (it does not start with
    /// `/`).
    pub fn is_volume_name(&self) -> bool {
        !self.source.starts_with('/')
    }

    /// True when the options include `ro`.
    pub fn read_only(&self) -> bool {
        self.options
            .as_deref()
            .is_some_and(|options| options.split(',').any(|option| option == "ro"))
    }
}

impl fmt::Display for Bind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.source, self.target)?;
        match &self.options {
            Some(options) => write!(f, ":{options}"),
            None => Ok(()),
        }
    }
}

impl std::str::FromStr for Bind {
    type Err = HookError;

    fn from_str(entry: &str) -> Result<Self, Self::Err> {
        Bind::parse(entry)
    }
}

/// One `HostConfig.Mounts` entry. The four fields hooks usually need are typed; every other
/// key (`BindOptions`, `VolumeOptions`, `TmpfsOptions`, `Consistency`, keys Docker adds
/// later) is kept in `extra`. An absent field stays absent when written.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Mount {
    /// `Type`: `bind`, `volume`, `tmpfs`, `npipe`, `cluster`, `image`.
    #[serde(rename = "Type", default, skip_serializing_if = "Option::is_none")]
    pub kind: Option<String>,
    /// `Source`: a host path for `bind`, a volume name for `volume`.
    #[serde(rename = "Source", default, skip_serializing_if = "Option::is_none")]
    pub source: Option<String>,
    /// `Target`: the path inside the container.
    #[serde(rename = "Target", default, skip_serializing_if = "Option::is_none")]
    pub target: Option<String>,
    /// `ReadOnly`.
    #[serde(rename = "ReadOnly", default, skip_serializing_if = "Option::is_none")]
    pub read_only: Option<bool>,
    /// Every other key, in the order sent.
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

impl Mount {
    /// A mount of `kind` (`bind`, `volume`, …) from `source` to `target`.
    pub fn new(
        kind: impl Into<String>,
        source: impl Into<String>,
        target: impl Into<String>,
    ) -> Self {
        Mount {
            kind: Some(kind.into()),
            source: Some(source.into()),
            target: Some(target.into()),
            ..Mount::default()
        }
    }

    /// Reads one entry as Docker does (`type` or `TYPE` set `Type`, …). Refuses (`400`,
    /// quoting the entry) a value that is not an object or whose typed fields have the
    /// wrong type.
    pub fn from_json(entry: &Value) -> Result<Mount, HookError> {
        let refuse = |why: String| {
            HookError::bad_request(format!(
                "HostConfig.Mounts entry {} is not a valid mount: {why}",
                describe(entry)
            ))
        };
        let Value::Object(object) = entry else {
            return Err(refuse("not an object".into()));
        };
        let mut spelled = Map::new();
        for (key, value) in object {
            let key = ["Type", "Source", "Target", "ReadOnly"]
                .into_iter()
                .find(|name| same_field(key, name))
                .map_or_else(|| key.clone(), str::to_owned);
            spelled.insert(key, value.clone());
        }
        serde_json::from_value(Value::Object(spelled)).map_err(|e| refuse(e.to_string()))
    }

    /// The entry as JSON.
    pub fn to_json(&self) -> Result<Value, HookError> {
        serde_json::to_value(self)
            .map_err(|e| HookError::failed(format!("adapter bug: mount not serialisable: {e}")))
    }
}

// --- Helpers -------------------------------------------------------------------------

/// Compares an object key with an ASCII field name as Go's `encoding/json` does: ASCII case
/// is ignored, and `ſ` (U+017F) and the Kelvin sign (U+212A) fold to `s` and `k`, as in
/// Unicode simple case folding. Other non-ASCII characters compare exactly, which is exact
/// for the ASCII field names Docker uses.
fn same_field(key: &str, name: &str) -> bool {
    fn fold(c: char) -> char {
        match c {
            '\u{017F}' => 's',
            '\u{212A}' => 'k',
            c => c.to_ascii_lowercase(),
        }
    }
    key.chars().map(fold).eq(name.chars().map(fold))
}

/// The key Go would store into field `name` (the last matching one).
fn key_of<'m>(object: &'m Map<String, Value>, name: &str) -> Option<&'m String> {
    object.keys().rev().find(|key| same_field(key, name))
}

/// Sets field `name` under the spelling already present (in place), else appends it under
/// `name`; other spellings of it are removed so that Docker reads this value.
fn set_field(object: &mut Map<String, Value>, name: &str, value: Value) {
    let mut keys: Vec<String> = object
        .keys()
        .filter(|key| same_field(key, name))
        .cloned()
        .collect();
    let key = keys.pop().unwrap_or_else(|| name.to_owned());
    for other in keys {
        object.shift_remove(&other);
    }
    object.insert(key, value);
}

/// Field `name` to edit in place: an existing value under any spelling, else `null`
/// appended under `name`.
fn slot<'m>(object: &'m mut Map<String, Value>, name: &str) -> &'m mut Value {
    let key = key_of(object, name)
        .cloned()
        .unwrap_or_else(|| name.to_owned());
    object.entry(key).or_insert(Value::Null)
}

fn is_absent(value: Option<&Value>) -> bool {
    matches!(value, None | Some(Value::Null))
}

/// Field `name` as a list to edit, created when absent or `null`; refused (`400`, naming
/// `path` and the bad value) when not a list or when an entry fails `entry_ok`.
fn list_mut<'m>(
    object: &'m mut Map<String, Value>,
    name: &str,
    path: &str,
    expected: &str,
    entry_ok: impl Fn(&Value) -> bool,
) -> Result<&'m mut Vec<Value>, HookError> {
    if let Some(value) = field(object, name) {
        let bad = match value {
            Value::Null => None,
            Value::Array(entries) => entries.iter().find(|entry| !entry_ok(entry)),
            other => Some(other),
        };
        if let Some(bad) = bad {
            return Err(HookError::bad_request(format!(
                "{path} must be {expected}, got {}",
                describe(bad)
            )));
        }
    }
    let value = slot(object, name);
    if !value.is_array() {
        *value = Value::Array(Vec::new());
    }
    match value {
        Value::Array(entries) => Ok(entries),
        _ => Err(HookError::failed(format!("internal error editing {path}"))),
    }
}

/// Field `name` as an object to edit, created when absent or `null`; refused (`400`) when
/// not an object or when a value fails `value_ok`.
fn object_mut<'m>(
    object: &'m mut Map<String, Value>,
    name: &str,
    path: &str,
    expected: &str,
    value_ok: impl Fn(&Value) -> bool,
) -> Result<&'m mut Map<String, Value>, HookError> {
    if let Some(value) = field(object, name) {
        let bad = match value {
            Value::Null => None,
            Value::Object(entries) => entries.values().find(|value| !value_ok(value)),
            other => Some(other),
        };
        if let Some(bad) = bad {
            return Err(HookError::bad_request(format!(
                "{path} must be {expected}, got {}",
                describe(bad)
            )));
        }
    }
    let value = slot(object, name);
    if !value.is_object() {
        *value = Value::Object(Map::new());
    }
    match value {
        Value::Object(entries) => Ok(entries),
        _ => Err(HookError::failed(format!("internal error editing {path}"))),
    }
}

fn split_env(entry: &str) -> (&str, Option<&str>) {
    match entry.split_once('=') {
        Some((key, value)) => (key, Some(value)),
        None => (entry, None),
    }
}

fn env_key(entry: &Value) -> Option<&str> {
    entry.as_str().map(|entry| split_env(entry).0)
}

fn label_value(value: &Value) -> Option<&str> {
    match value {
        Value::String(value) => Some(value),
        Value::Null => Some(""),
        _ => None,
    }
}

/// Docker's `StrSlice`: a list of strings (a `null` element reads as `""`) or one string.
fn str_slice(value: &Value) -> Option<Vec<&str>> {
    match value {
        Value::String(one) => Some(vec![one.as_str()]),
        Value::Array(items) => items.iter().map(label_value).collect(),
        _ => None,
    }
}

fn string_list<I, S>(items: I) -> Value
where
    I: IntoIterator<Item = S>,
    S: Into<String>,
{
    Value::Array(
        items
            .into_iter()
            .map(|item| Value::String(item.into()))
            .collect(),
    )
}

/// A value as JSON for an error message, cut short when long.
fn describe(value: &Value) -> String {
    const LIMIT: usize = 80;
    let text = value.to_string();
    match text.char_indices().nth(LIMIT) {
        Some((cut, _)) => format!("{}…", &text[..cut]),
        None => text,
    }
}

/// Refuses two spellings of one field in the objects Docker decodes into structs and this
/// view reads: the top level, `HostConfig` and each `HostConfig.Mounts` entry.
fn check_spellings(document: &Map<String, Value>) -> Result<(), HookError> {
    check_object_spellings(document, "")?;
    if let Some(Value::Object(host_config)) = field(document, "HostConfig") {
        check_object_spellings(host_config, " in HostConfig")?;
        if let Some(Value::Array(mounts)) = field(host_config, "Mounts") {
            for mount in mounts.iter().filter_map(Value::as_object) {
                check_object_spellings(mount, " in a HostConfig.Mounts entry")?;
            }
        }
    }
    Ok(())
}

fn check_object_spellings(object: &Map<String, Value>, place: &str) -> Result<(), HookError> {
    for (i, first) in object.keys().enumerate() {
        if let Some(second) = object.keys().skip(i + 1).find(|key| same_field(key, first)) {
            return Err(HookError::bad_request(format!(
                "{CONTAINER_CREATE} body has both {first:?} and {second:?}{place}; \
                 Docker reads them as one field"
            )));
        }
    }
    Ok(())
}

/// Walks a JSON text and fails on the first object with a repeated key, keeping nothing.
struct NoRepeatedKeys;

impl<'de> Deserialize<'de> for NoRepeatedKeys {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_any(NoRepeatedKeys)
    }
}

impl<'de> Visitor<'de> for NoRepeatedKeys {
    type Value = NoRepeatedKeys;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("any JSON value")
    }

    fn visit_bool<E>(self, _: bool) -> Result<Self, E> {
        Ok(self)
    }
    fn visit_i64<E>(self, _: i64) -> Result<Self, E> {
        Ok(self)
    }
    fn visit_u64<E>(self, _: u64) -> Result<Self, E> {
        Ok(self)
    }
    fn visit_f64<E>(self, _: f64) -> Result<Self, E> {
        Ok(self)
    }
    fn visit_str<E>(self, _: &str) -> Result<Self, E> {
        Ok(self)
    }
    fn visit_unit<E>(self) -> Result<Self, E> {
        Ok(self)
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Self, A::Error> {
        while seq.next_element::<NoRepeatedKeys>()?.is_some() {}
        Ok(self)
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self, A::Error> {
        let mut seen = HashSet::new();
        while let Some(key) = map.next_key::<String>()? {
            if !seen.insert(key.clone()) {
                return Err(de::Error::custom(format_args!("repeated key {key:?}")));
            }
            map.next_value::<NoRepeatedKeys>()?;
        }
        Ok(self)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    /// What the docker CLI 28 sends to API 1.41 for
    /// `docker run -it -e PATH=… -v myVol@gold:/data --name web busybox sh`, keys in the
    /// CLI's order, plus one field from the future that no version of this crate knows.
    const CLI_BODY: &str = concat!(
        r#"{"Hostname":"","Domainname":"","User":"","AttachStdin":true,"AttachStdout":true,"#,
        r#""AttachStderr":true,"Tty":true,"OpenStdin":true,"StdinOnce":true,"#,
        r#""Env":["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"],"#,
        r#""Cmd":["sh"],"Image":"busybox","Volumes":null,"WorkingDir":"","Entrypoint":null,"#,
        r#""OnBuild":null,"Labels":{},"#,
        r#""HostConfig":{"Binds":["myVol@gold:/data"],"ContainerIDFile":"","#,
        r#""LogConfig":{"Type":"","Config":{}},"NetworkMode":"default","PortBindings":{},"#,
        r#""RestartPolicy":{"Name":"no","MaximumRetryCount":0},"AutoRemove":false,"#,
        r#""VolumeDriver":"","VolumesFrom":null,"ConsoleSize":[50,200],"CapAdd":null,"#,
        r#""CapDrop":null,"CgroupnsMode":"","Dns":[],"DnsOptions":[],"DnsSearch":[],"#,
        r#""ExtraHosts":null,"GroupAdd":null,"IpcMode":"","Cgroup":"","Links":null,"#,
        r#""OomScoreAdj":0,"PidMode":"","Privileged":false,"PublishAllPorts":false,"#,
        r#""ReadonlyRootfs":false,"SecurityOpt":null,"UTSMode":"","UsernsMode":"","#,
        r#""ShmSize":0,"Isolation":"","CpuShares":0,"Memory":0,"NanoCpus":0,"#,
        r#""CgroupParent":"","BlkioWeight":0,"BlkioWeightDevice":[],"BlkioDeviceReadBps":[],"#,
        r#""BlkioDeviceWriteBps":[],"BlkioDeviceReadIOps":[],"BlkioDeviceWriteIOps":[],"#,
        r#""CpuPeriod":0,"CpuQuota":0,"CpuRealtimePeriod":0,"CpuRealtimeRuntime":0,"#,
        r#""CpusetCpus":"","CpusetMems":"","Devices":[],"DeviceCgroupRules":null,"#,
        r#""DeviceRequests":null,"MemoryReservation":0,"MemorySwap":0,"#,
        r#""MemorySwappiness":null,"OomKillDisable":false,"PidsLimit":null,"Ulimits":[],"#,
        r#""CpuCount":0,"CpuPercent":0,"IOMaximumIOps":0,"IOMaximumBandwidth":0,"#,
        r#""MaskedPaths":null,"ReadonlyPaths":null},"#,
        r#""NetworkingConfig":{"EndpointsConfig":{}},"XFuture":{"a":[1,{"b":null}]}}"#,
    );

    fn create(body: &str) -> ContainerCreate {
        ContainerCreate::parse(body).unwrap()
    }

    fn value(body: &str) -> Value {
        serde_json::from_str(body).unwrap()
    }

    fn keys(value: &Value) -> Vec<&str> {
        value
            .as_object()
            .unwrap()
            .keys()
            .map(String::as_str)
            .collect()
    }

    fn bad_request(error: HookError) -> String {
        assert_eq!(error.status(), 400, "{error}");
        assert!(error.is_refusal());
        error.message().to_owned()
    }

    #[test]
    fn cli_body_round_trips_byte_for_byte() {
        let view = create(CLI_BODY);
        assert_eq!(view.to_body(), CLI_BODY);
        assert_eq!(view.to_body(), value(CLI_BODY).to_string());
        // Pretty-printed input comes out as serde_json's compact form of the same value.
        let pretty = serde_json::to_string_pretty(&value(CLI_BODY)).unwrap();
        assert_eq!(create(&pretty).to_body(), CLI_BODY);
    }

    #[test]
    fn numbers_round_trip_as_serde_json_prints_them() {
        let body = r#"{"A":1e3,"B":18446744073709551615,"C":-9223372036854775808,"D":0.1,"E":-0.0,"F":12345678901234567890123}"#;
        assert_eq!(create(body).to_body(), value(body).to_string());
        assert_eq!(
            create(r#"{"Memory":9223372036854775807,"NanoCpus":1500000000}"#).to_body(),
            r#"{"Memory":9223372036854775807,"NanoCpus":1500000000}"#
        );
    }

    #[test]
    fn getters_read_the_cli_body() {
        let view = create(CLI_BODY);
        assert_eq!(view.image(), Some("busybox"));
        assert_eq!(view.user(), Some(""));
        assert!(view.runs_as_root());
        assert_eq!(
            view.env(),
            [(
                "PATH",
                Some("/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin")
            )]
        );
        assert_eq!(view.cmd(), Some(vec!["sh"]));
        assert_eq!(view.entrypoint(), None);
        assert!(view.labels().is_empty());
        assert_eq!(view.binds().unwrap(), [Bind::new("myVol@gold", "/data")]);
        assert!(view.mounts().unwrap().is_empty());
        assert_eq!(view.network_mode(), Some("default"));
        let host_config = view.host_config().unwrap();
        assert_eq!(field(host_config, "Privileged"), Some(&json!(false)));
    }

    #[test]
    fn set_label_changes_only_labels() {
        let mut view = create(CLI_BODY);
        view.set_label("com.example.owner", "ops").unwrap();
        let mut after = value(&view.to_body());
        let mut before = value(CLI_BODY);
        assert_eq!(keys(&after), keys(&before));
        assert_eq!(after["Labels"], json!({"com.example.owner": "ops"}));
        after.as_object_mut().unwrap().shift_remove("Labels");
        before.as_object_mut().unwrap().shift_remove("Labels");
        assert_eq!(after, before);
        assert_eq!(after.to_string(), before.to_string());
    }

    #[test]
    fn every_setter_leaves_the_rest_alone() {
        let mut view = create(CLI_BODY);
        view.set_image("busybox:1.36");
        view.set_user("1000:1000");
        view.set_cmd(["sh", "-c", "true"]);
        view.set_entrypoint([""]);
        view.set_env_var("TERM", "xterm").unwrap();
        view.set_network_mode("none").unwrap();
        view.add_bind(Bind::parse("/srv:/srv:ro").unwrap()).unwrap();
        let after = value(&view.to_body());
        let mut expected = value(CLI_BODY);
        expected["Image"] = json!("busybox:1.36");
        expected["User"] = json!("1000:1000");
        expected["Cmd"] = json!(["sh", "-c", "true"]);
        expected["Entrypoint"] = json!([""]);
        expected["Env"]
            .as_array_mut()
            .unwrap()
            .push(json!("TERM=xterm"));
        expected["HostConfig"]["NetworkMode"] = json!("none");
        expected["HostConfig"]["Binds"] = json!(["myVol@gold:/data", "/srv:/srv:ro"]);
        assert_eq!(after.to_string(), expected.to_string());
    }

    #[test]
    fn env_on_an_absent_list() {
        let mut view = create(r#"{"Image":"busybox"}"#);
        assert!(view.env().is_empty());
        assert_eq!(view.env_var("A"), None);
        assert_eq!(view.remove_env_var("A").unwrap(), None);
        assert_eq!(
            view.to_body(),
            r#"{"Image":"busybox"}"#,
            "removing creates nothing"
        );
        view.set_env_var("A", "1").unwrap();
        assert_eq!(view.to_body(), r#"{"Image":"busybox","Env":["A=1"]}"#);
    }

    #[test]
    fn env_on_a_null_list() {
        let mut view = create(r#"{"Env":null,"Image":"busybox"}"#);
        assert!(view.env().is_empty());
        assert_eq!(view.remove_env_var("A").unwrap(), None);
        assert_eq!(view.to_body(), r#"{"Env":null,"Image":"busybox"}"#);
        view.set_env_var("A", "1").unwrap();
        assert_eq!(view.to_body(), r#"{"Env":["A=1"],"Image":"busybox"}"#);
    }

    #[test]
    fn env_on_an_existing_list() {
        let mut view = create(r#"{"Env":["A=1","B=x=y","BARE","A=2","C="]}"#);
        assert_eq!(
            view.env(),
            [
                ("A", Some("1")),
                ("B", Some("x=y")),
                ("BARE", None),
                ("A", Some("2")),
                ("C", Some(""))
            ]
        );
        assert_eq!(view.env_var("A"), Some("1"));
        assert_eq!(view.env_var("B"), Some("x=y"));
        assert_eq!(view.env_var("BARE"), None);
        assert_eq!(view.env_var("C"), Some(""));
        assert_eq!(view.env_var("a"), None, "keys are case-sensitive");

        // Replaces the first in place and drops the later duplicate.
        view.set_env_var("A", "new").unwrap();
        assert_eq!(view.to_body(), r#"{"Env":["A=new","B=x=y","BARE","C="]}"#);
        view.set_env_var("BARE", "set").unwrap();
        assert_eq!(
            view.to_body(),
            r#"{"Env":["A=new","B=x=y","BARE=set","C="]}"#
        );
        view.set_env_var("D", "4").unwrap();
        assert_eq!(
            view.to_body(),
            r#"{"Env":["A=new","B=x=y","BARE=set","C=","D=4"]}"#
        );

        let mut view = create(r#"{"Env":["S","S=1","T=2","S=3"]}"#);
        assert_eq!(view.remove_env_var("S").unwrap(), Some("1".into()));
        assert_eq!(view.to_body(), r#"{"Env":["T=2"]}"#);
        assert_eq!(view.remove_env_var("S").unwrap(), None);
    }

    #[test]
    fn env_refuses_to_edit_a_malformed_list() {
        for (body, bad) in [
            (r#"{"Env":"A=1"}"#, r#""A=1""#),
            (r#"{"Env":{"A":"1"}}"#, r#"{"A":"1"}"#),
            (r#"{"Env":["A=1",42]}"#, "42"),
        ] {
            let mut view = create(body);
            let message = bad_request(view.set_env_var("B", "2").unwrap_err());
            assert!(message.starts_with("Env must be a list of"), "{message}");
            assert!(message.ends_with(&format!("got {bad}")), "{message}");
            bad_request(view.remove_env_var("A").unwrap_err());
            assert_eq!(view.to_body(), body, "unchanged after a refusal");
        }
        // Getters show the well-formed part.
        assert!(create(r#"{"Env":"A=1"}"#).env().is_empty());
        assert_eq!(create(r#"{"Env":["A=1",42]}"#).env(), [("A", Some("1"))]);
        // Go reads a null entry as "", a no-op: tolerated and kept.
        let mut view = create(r#"{"Env":[null,"A=1"]}"#);
        view.set_env_var("A", "2").unwrap();
        assert_eq!(view.to_body(), r#"{"Env":[null,"A=2"]}"#);
        // A bad name is the hook's bug, not the client's.
        let error = view.set_env_var("A=B", "1").unwrap_err();
        assert_eq!(error.status(), 502);
        assert!(!error.is_refusal());
    }

    #[test]
    fn labels() {
        let mut view = create(r#"{"Labels":{"b":"2","a":"1","n":null},"Image":"x"}"#);
        assert_eq!(view.labels(), [("b", "2"), ("a", "1"), ("n", "")]);
        assert_eq!(view.label("a"), Some("1"));
        assert_eq!(view.label("n"), Some(""));
        assert_eq!(view.label("A"), None, "label keys are case-sensitive");
        view.set_label("b", "two").unwrap();
        view.set_label("c", "3").unwrap();
        assert_eq!(view.remove_label("b").unwrap(), Some("two".into()));
        assert_eq!(view.remove_label("missing").unwrap(), None);
        assert_eq!(
            view.to_body(),
            r#"{"Labels":{"a":"1","n":null,"c":"3"},"Image":"x"}"#,
            "order kept on removal"
        );

        let mut view = create(r#"{"Labels":null}"#);
        assert_eq!(view.remove_label("a").unwrap(), None);
        assert_eq!(view.to_body(), r#"{"Labels":null}"#);
        view.set_label("a", "1").unwrap();
        assert_eq!(view.to_body(), r#"{"Labels":{"a":"1"}}"#);

        for (body, bad) in [
            (r#"{"Labels":["a=1"]}"#, r#"["a=1"]"#),
            (r#"{"Labels":{"a":1}}"#, "1"),
        ] {
            let mut view = create(body);
            let message = bad_request(view.set_label("b", "2").unwrap_err());
            assert_eq!(
                message,
                format!("Labels must be an object of strings, got {bad}")
            );
            bad_request(view.remove_label("a").unwrap_err());
            assert_eq!(view.to_body(), body);
        }
        assert!(create(r#"{"Labels":["a=1"]}"#).labels().is_empty());
        assert_eq!(
            create(r#"{"Labels":{"a":1,"b":"2"}}"#).labels(),
            [("b", "2")]
        );
    }

    #[test]
    fn cmd_and_entrypoint_in_every_form() {
        let view = create(r#"{"Cmd":"echo hi","Entrypoint":["/bin/sh","-c"]}"#);
        assert_eq!(view.cmd(), Some(vec!["echo hi"]));
        assert_eq!(view.entrypoint(), Some(vec!["/bin/sh", "-c"]));
        let view = create(r#"{"Cmd":[],"Entrypoint":[""]}"#);
        assert_eq!(view.cmd(), Some(vec![]));
        assert_eq!(view.entrypoint(), Some(vec![""]));
        let view = create(r#"{"Cmd":null}"#);
        assert_eq!((view.cmd(), view.entrypoint()), (None, None));
        assert_eq!(create(r#"{"Cmd":[1]}"#).cmd(), None);
        assert_eq!(create(r#"{"Cmd":["a",null]}"#).cmd(), Some(vec!["a", ""]));

        let mut view = create(r#"{"Cmd":"echo hi","Image":"x"}"#);
        view.set_cmd(vec!["echo".to_owned(), "bye".to_owned()]);
        view.set_entrypoint(["tini", "--"]);
        assert_eq!(
            view.to_body(),
            r#"{"Cmd":["echo","bye"],"Image":"x","Entrypoint":["tini","--"]}"#
        );
    }

    #[test]
    fn bind_parsing() {
        let bind = Bind::parse("myVol@gold:/data").unwrap();
        assert_eq!(bind, Bind::new("myVol@gold", "/data"));
        assert!(bind.is_volume_name());
        assert!(!bind.read_only());

        let bind = Bind::parse("/host:/c:ro").unwrap();
        assert_eq!(bind.source, "/host");
        assert_eq!(bind.target, "/c");
        assert_eq!(bind.options.as_deref(), Some("ro"));
        assert!(!bind.is_volume_name());
        assert!(bind.read_only());
        assert!(Bind::parse("/a:/b:z,ro").unwrap().read_only());
        assert!(!Bind::parse("/a:/b:rw,rslave").unwrap().read_only());

        for entry in [
            "myVol@gold:/data",
            "/host:/c:ro",
            "/a:/b:",
            "v:/b:ro,z",
            "a:b:c:d",
        ] {
            assert_eq!(Bind::parse(entry).unwrap().to_string(), entry);
            assert_eq!(entry.parse::<Bind>().unwrap().to_string(), entry);
        }
        for entry in ["nocolon", "", ":/data", "vol:", "/data"] {
            let message = bad_request(Bind::parse(entry).unwrap_err());
            assert_eq!(
                message,
                format!(
                    "HostConfig.Binds entry {entry:?} is not of the form source:target[:options]"
                )
            );
        }
    }

    #[test]
    fn binds_on_the_document() {
        let mut view = create(r#"{"Image":"x"}"#);
        assert!(view.binds().unwrap().is_empty());
        view.add_bind(Bind::new("v", "/v")).unwrap();
        assert_eq!(
            view.to_body(),
            r#"{"Image":"x","HostConfig":{"Binds":["v:/v"]}}"#
        );

        let mut view = create(r#"{"HostConfig":{"Binds":null,"Privileged":false}}"#);
        assert!(view.binds().unwrap().is_empty());
        view.add_bind(Bind::new("v", "/v")).unwrap();
        assert_eq!(
            view.to_body(),
            r#"{"HostConfig":{"Binds":["v:/v"],"Privileged":false}}"#
        );

        // Rewrite volume names, Flocker-style; the other entries come back as sent.
        let mut view = create(r#"{"HostConfig":{"Binds":["/etc:/etc:ro","myVol@gold:/data:z"]}}"#);
        let binds = view.binds().unwrap().into_iter().map(|mut bind| {
            if bind.is_volume_name() {
                bind.source = format!("/flocker/{}", bind.source.replace('@', "-"));
            }
            bind
        });
        view.set_binds(binds.collect::<Vec<_>>()).unwrap();
        assert_eq!(
            view.to_body(),
            r#"{"HostConfig":{"Binds":["/etc:/etc:ro","/flocker/myVol-gold:/data:z"]}}"#
        );

        let view = create(r#"{"HostConfig":{"Binds":["/a:/a","nocolon"]}}"#);
        assert!(bad_request(view.binds().unwrap_err()).contains(r#""nocolon""#));
        let view = create(r#"{"HostConfig":{"Binds":[7]}}"#);
        assert!(bad_request(view.binds().unwrap_err()).ends_with("got 7"));
        let view = create(r#"{"HostConfig":{"Binds":"/a:/a"}}"#);
        assert!(bad_request(view.binds().unwrap_err()).ends_with(r#"got "/a:/a""#));
        let mut view = create(r#"{"HostConfig":{"Binds":"/a:/a"}}"#);
        bad_request(view.add_bind(Bind::new("v", "/v")).unwrap_err());

        let mut view = create(r#"{"HostConfig":"oops"}"#);
        assert!(view.binds().unwrap().is_empty());
        let message = bad_request(view.add_bind(Bind::new("v", "/v")).unwrap_err());
        assert_eq!(message, r#"HostConfig must be an object, got "oops""#);
        bad_request(view.set_binds([]).unwrap_err());
        bad_request(view.set_network_mode("host").unwrap_err());
        assert_eq!(view.to_body(), r#"{"HostConfig":"oops"}"#);
    }

    #[test]
    fn mounts_keep_unknown_keys_and_untouched_entries() {
        let body = concat!(
            r#"{"HostConfig":{"Mounts":["#,
            r#"{"Target":"/data","Source":"vol","Type":"volume","ReadOnly":null,"VolumeOptions":{"NoCopy":true,"Labels":null},"Consistency":"default"},"#,
            r#"{"Type":"bind","Source":"/etc","Target":"/etc","ReadOnly":true,"BindOptions":{"Propagation":"rprivate"}}"#,
            r#"]}}"#
        );
        let mut view = create(body);
        let mut mounts = view.mounts().unwrap();
        assert_eq!(mounts[0].kind.as_deref(), Some("volume"));
        assert_eq!(mounts[0].read_only, None);
        assert_eq!(
            mounts[0].extra,
            *json!({"VolumeOptions":{"NoCopy":true,"Labels":null},"Consistency":"default"})
                .as_object()
                .unwrap()
        );
        assert_eq!(mounts[1].read_only, Some(true));

        // Writing them back unchanged is byte-identical.
        view.set_mounts(mounts.clone()).unwrap();
        assert_eq!(view.to_body(), body);

        // Changing one rewrites only that one; its unknown keys survive.
        mounts[1].read_only = Some(false);
        mounts.push(Mount::new("tmpfs", "", "/tmp"));
        view.set_mounts(mounts).unwrap();
        let after = value(&view.to_body());
        let before = value(body);
        assert_eq!(
            after["HostConfig"]["Mounts"][0].to_string(),
            before["HostConfig"]["Mounts"][0].to_string()
        );
        assert_eq!(
            after["HostConfig"]["Mounts"][1],
            json!({"Type":"bind","Source":"/etc","Target":"/etc","ReadOnly":false,"BindOptions":{"Propagation":"rprivate"}})
        );
        assert_eq!(
            after["HostConfig"]["Mounts"][2].to_string(),
            r#"{"Type":"tmpfs","Source":"","Target":"/tmp"}"#
        );

        let mut view = create(r#"{"HostConfig":{}}"#);
        view.add_mount(Mount::new("volume", "v", "/v")).unwrap();
        assert_eq!(
            view.to_body(),
            r#"{"HostConfig":{"Mounts":[{"Type":"volume","Source":"v","Target":"/v"}]}}"#
        );

        let view = create(r#"{"HostConfig":{"Mounts":[{"Type":"bind","ReadOnly":"yes"}]}}"#);
        let message = bad_request(view.mounts().unwrap_err());
        assert!(
            message.starts_with(
                r#"HostConfig.Mounts entry {"Type":"bind","ReadOnly":"yes"} is not a valid mount: "#
            ),
            "{message}"
        );
        let view = create(r#"{"HostConfig":{"Mounts":["/a:/a"]}}"#);
        bad_request(view.mounts().unwrap_err());
    }

    #[test]
    fn runs_as_root() {
        for (user, root) in [
            (None, true),
            (Some(json!(null)), true),
            (Some(json!("")), true),
            (Some(json!("root")), true),
            (Some(json!("0")), true),
            (Some(json!("00")), true),
            (Some(json!("root:root")), true),
            (Some(json!("0:1000")), true),
            (Some(json!(":1000")), true),
            (Some(json!(0)), true),
            (Some(json!("1000")), false),
            (Some(json!("1000:0")), false),
            (Some(json!("app")), false),
            (Some(json!("rooty")), false),
            (Some(json!("app:root")), false),
        ] {
            let mut document = Map::new();
            if let Some(user) = user.clone() {
                document.insert("User".into(), user);
            }
            assert_eq!(
                ContainerCreate::from_json(document).runs_as_root(),
                root,
                "{user:?}"
            );
        }
        let mut view = create("{}");
        view.set_user("1000");
        assert!(!view.runs_as_root());
    }

    #[test]
    fn fields_are_found_as_docker_finds_them() {
        let view = create(r#"{"image":"evil","USER":"0","hostconfig":{"networkmode":"host"}}"#);
        assert_eq!(view.image(), Some("evil"));
        assert!(view.runs_as_root());
        assert_eq!(view.network_mode(), Some("host"));
        // Go's case folding also maps ſ to s and the Kelvin sign to k.
        assert_eq!(create("{\"Uſer\":\"0\"}").user(), Some("0"));

        // Setting writes to the spelling present, in place.
        let mut view = create(r#"{"image":"a","Tty":true}"#);
        view.set_image("b");
        assert_eq!(view.to_body(), r#"{"image":"b","Tty":true}"#);

        // A mount's fields too.
        let view =
            create(r#"{"HostConfig":{"Mounts":[{"type":"bind","source":"/","TARGET":"/host"}]}}"#);
        let mounts = view.mounts().unwrap();
        assert_eq!(mounts[0], Mount::new("bind", "/", "/host"));
    }

    #[test]
    fn ambiguous_bodies_are_refused() {
        let message =
            bad_request(ContainerCreate::parse(r#"{"Image":"ok","Image":"evil"}"#).unwrap_err());
        assert_eq!(
            message,
            r#"container create request body has a repeated key "Image" at line 1 column 21"#
        );
        // At any depth: Docker merges repeated objects.
        let message = bad_request(
            ContainerCreate::parse(
                r#"{"HostConfig":{"Privileged":true},"Labels":{"a":"1","a":"2"}}"#,
            )
            .unwrap_err(),
        );
        assert!(message.contains(r#"repeated key "a""#), "{message}");
        let message =
            bad_request(ContainerCreate::parse(r#"{"Image":"ok","image":"evil"}"#).unwrap_err());
        assert_eq!(
            message,
            r#"container create request body has both "Image" and "image"; Docker reads them as one field"#
        );
        let message = bad_request(
            ContainerCreate::parse(r#"{"HostConfig":{"Privileged":false,"privileged":true}}"#)
                .unwrap_err(),
        );
        assert!(
            message.ends_with("in HostConfig; Docker reads them as one field"),
            "{message}"
        );
        bad_request(
            ContainerCreate::parse(r#"{"HostConfig":{"Mounts":[{"Source":"/a","source":"/"}]}}"#)
                .unwrap_err(),
        );
        // Label keys are a Go map: exact, so these are two labels.
        assert_eq!(create(r#"{"Labels":{"a":"1","A":"2"}}"#).labels().len(), 2);
    }

    #[test]
    fn bodies_that_are_not_objects_are_refused() {
        let none = ClientRequest::new("POST", "/v1.41/containers/create", None);
        assert_eq!(
            bad_request(ContainerCreate::from_request(&none).unwrap_err()),
            "container create request has no body"
        );
        let message = bad_request(ContainerCreate::parse("").unwrap_err());
        assert!(
            message.starts_with("container create request body is not valid JSON: "),
            "{message}"
        );
        let message = bad_request(ContainerCreate::parse(r#"{"Image":"#).unwrap_err());
        assert!(message.contains("line 1 column 9"), "{message}");
        assert_eq!(
            bad_request(ContainerCreate::parse(r#"["busybox"]"#).unwrap_err()),
            r#"container create request body must be a JSON object, got ["busybox"]"#
        );
        let long = format!("\"{}\"", "é".repeat(200));
        let message = bad_request(ContainerCreate::parse(&long).unwrap_err());
        assert!(message.ends_with("é…"), "{message}");
    }

    #[test]
    fn write_to_sets_the_body() {
        let mut request = ClientRequest::new(
            "POST",
            "/v1.41/containers/create?name=web",
            Some(CLI_BODY.into()),
        );
        let mut view = ContainerCreate::from_request(&request).unwrap();
        view.set_label("a", "1").unwrap();
        view.write_to(&mut request);
        assert_eq!(request.request, "/v1.41/containers/create?name=web");
        assert_eq!(request.body, Some(view.to_body()));
        assert!(view.to_body().contains(r#""Labels":{"a":"1"}"#));
        assert_eq!(view.clone().into_json(), *view.as_json());
    }

    #[test]
    fn parse_object_for_other_bodies() {
        let object = parse_object(
            Some(r#"{"Name":"net","Driver":"bridge"}"#),
            "network create request",
        )
        .unwrap();
        assert_eq!(object["Driver"], "bridge");
        assert_eq!(
            parse_object(None, "network create request")
                .unwrap_err()
                .message(),
            "network create request has no body"
        );
        assert_eq!(
            parse_object(Some("3"), "network create request")
                .unwrap_err()
                .message(),
            "network create request body must be a JSON object, got 3"
        );
    }
}

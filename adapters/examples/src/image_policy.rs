//! `image-policy`: refuses containers from images outside an allow-list, or that would run
//! as root.
//!
//! A policy is a pre-hook on `POST /*/containers/create` that either passes the request on
//! untouched or refuses it with a `403` whose message the docker user reads:
//!
//! ```text
//! $ docker run --rm nginx
//! docker: Error response from daemon: image-policy: image "nginx" is not allowed here (allowed: busybox:*).
//! ```
//!
//! `allow` holds image globs (`*` matches anything, `/` included); an image written without
//! a tag also matches as `:latest` (`busybox` is `busybox:latest` to Docker). With
//! `allow_root = false` (the default) a container must name a non-root user
//! (`docker run --user 1000`): the create request alone cannot tell which user an image
//! defaults to, so an unset user counts as root. Requests other than container creates pass.
//!
//! ```
//! use powerstrip_adapter::{Adapter, ClientRequest};
//! use powerstrip_examples::image_policy::ImagePolicy;
//!
//! # #[tokio::main(flavor = "current_thread")] async fn main() {
//! let policy = ImagePolicy::new(&["busybox:*".to_owned()], false).unwrap();
//! let create = |body: &str| ClientRequest::new("POST", "/v1.41/containers/create", Some(body.into()));
//!
//! assert!(policy.pre_hook(create(r#"{"Image":"busybox:local","User":"1000"}"#)).await.is_ok());
//! let refused = policy.pre_hook(create(r#"{"Image":"nginx","User":"1000"}"#)).await.unwrap_err();
//! assert_eq!(refused.status(), 403);
//! let refused = policy.pre_hook(create(r#"{"Image":"busybox:local"}"#)).await.unwrap_err();
//! assert!(refused.message().contains("may not run as root"));
//! # }
//! ```

use std::sync::Arc;

use globset::{GlobBuilder, GlobSet, GlobSetBuilder};
use powerstrip_adapter::builtin::{Builtin, parse_options};
use powerstrip_adapter::docker::ContainerCreate;
use powerstrip_adapter::path::RequestExt as _;
use powerstrip_adapter::{Adapter, ClientRequest, HookError, async_trait};
use serde::Deserialize;

/// Refuses container creates whose image is not allowed or that would run as root.
#[derive(Debug)]
pub struct ImagePolicy {
    /// The allowed image globs, compiled.
    allow: GlobSet,
    /// The same globs as written, for messages.
    patterns: Vec<String>,
    /// Whether containers may run as root.
    allow_root: bool,
}

impl ImagePolicy {
    /// A policy allowing images matching any of `allow`; `allow_root` permits containers
    /// without a non-root user.
    pub fn new(allow: &[String], allow_root: bool) -> Result<Self, String> {
        let mut set = GlobSetBuilder::new();
        for pattern in allow {
            let glob = GlobBuilder::new(pattern)
                .literal_separator(false)
                .build()
                .map_err(|e| format!("allow: bad image pattern {pattern:?}: {e}"))?;
            set.add(glob);
        }
        Ok(ImagePolicy {
            allow: set.build().map_err(|e| format!("allow: {e}"))?,
            patterns: allow.to_vec(),
            allow_root,
        })
    }

    fn image_allowed(&self, image: &str) -> bool {
        self.allow.is_match(image)
            || (!has_tag_or_digest(image) && self.allow.is_match(format!("{image}:latest")))
    }

    fn check(&self, create: &ContainerCreate) -> Result<(), HookError> {
        let Some(image) = create.image().filter(|i| !i.is_empty()) else {
            return Err(HookError::forbidden(
                "image-policy: the request names no image",
            ));
        };
        if !self.image_allowed(image) {
            let allowed = if self.patterns.is_empty() {
                "nothing".to_owned()
            } else {
                self.patterns.join(", ")
            };
            return Err(HookError::forbidden(format!(
                "image-policy: image {image:?} is not allowed here (allowed: {allowed})"
            )));
        }
        if !self.allow_root && create.runs_as_root() {
            return Err(HookError::forbidden(format!(
                "image-policy: containers may not run as root here; run {image} as another user (docker run --user 1000 ...)"
            )));
        }
        Ok(())
    }
}

/// True when the last path component of an image reference names a tag or a digest
/// (`host:5000/busybox` has neither).
fn has_tag_or_digest(image: &str) -> bool {
    let last = image.rsplit('/').next().unwrap_or(image);
    last.contains(':') || image.contains('@')
}

#[async_trait]
impl Adapter for ImagePolicy {
    async fn pre_hook(&self, request: ClientRequest) -> Result<ClientRequest, HookError> {
        if request.method != "POST" || request.docker_path().endpoint() != "/containers/create" {
            return Ok(request);
        }
        self.check(&ContainerCreate::from_request(&request)?)?;
        Ok(request)
    }
}

/// `image-policy`'s options.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Options {
    allow: Vec<String>,
    #[serde(default)]
    allow_root: bool,
}

/// `image-policy` as a builtin: `{ builtin = "image-policy", allow = ["busybox:*"] }`.
pub fn builtin() -> Builtin {
    Builtin::new(
        "image-policy",
        "refuses containers from images outside an allow-list, or that run as root",
        |options, _ctx| {
            let options: Options = parse_options(options)?;
            Ok(Arc::new(ImagePolicy::new(
                &options.allow,
                options.allow_root,
            )?))
        },
    )
    .option(
        "allow",
        "list of image globs",
        None,
        "images containers may be created from, e.g. [\"busybox:*\"]",
    )
    .option(
        "allow_root",
        "bool",
        Some("false"),
        "let containers run as root (no --user, or --user root/0)",
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy(allow: &[&str], allow_root: bool) -> ImagePolicy {
        ImagePolicy::new(
            &allow.iter().map(|s| s.to_string()).collect::<Vec<_>>(),
            allow_root,
        )
        .unwrap()
    }

    fn create(body: &str) -> ClientRequest {
        ClientRequest::new("POST", "/v1.41/containers/create?name=x", Some(body.into()))
    }

    #[tokio::test]
    async fn images_are_matched_with_and_without_tags() {
        let p = policy(
            &["busybox:*", "registry.local:5000/*", "alpine:latest"],
            true,
        );
        for ok in [
            "busybox:local",
            "busybox",
            "registry.local:5000/team/app:1.2",
            "alpine",
        ] {
            assert!(
                p.pre_hook(create(&format!(r#"{{"Image":"{ok}"}}"#)))
                    .await
                    .is_ok(),
                "{ok}"
            );
        }
        for refused in [
            "nginx",
            "alpine:3.19",
            "evil/busybox:1",
            "registry.local:5001/x",
        ] {
            let err = p
                .pre_hook(create(&format!(r#"{{"Image":"{refused}"}}"#)))
                .await
                .unwrap_err();
            assert_eq!(err.status(), 403, "{refused}");
            assert_eq!(
                err.message(),
                format!(
                    "image-policy: image \"{refused}\" is not allowed here (allowed: busybox:*, registry.local:5000/*, alpine:latest)"
                )
            );
        }
    }

    #[tokio::test]
    async fn root_is_refused_unless_allowed() {
        let strict = policy(&["*"], false);
        for root in [
            r#"{"Image":"x"}"#,
            r#"{"Image":"x","User":""}"#,
            r#"{"Image":"x","User":"root"}"#,
            r#"{"Image":"x","User":"0:0"}"#,
        ] {
            let err = strict.pre_hook(create(root)).await.unwrap_err();
            assert!(
                err.message().contains("may not run as root"),
                "{root}: {}",
                err.message()
            );
        }
        assert!(
            strict
                .pre_hook(create(r#"{"Image":"x","User":"1000:1000"}"#))
                .await
                .is_ok()
        );
        assert!(
            policy(&["*"], true)
                .pre_hook(create(r#"{"Image":"x"}"#))
                .await
                .is_ok()
        );
    }

    #[tokio::test]
    async fn other_requests_pass_and_bad_bodies_are_400() {
        let p = policy(&[], false);
        let start = ClientRequest::new("POST", "/v1.41/containers/abc/start", None);
        assert_eq!(p.pre_hook(start.clone()).await.unwrap(), start);
        let err = p.pre_hook(create("not json")).await.unwrap_err();
        assert_eq!(err.status(), 400);
        let err = p.pre_hook(create("{}")).await.unwrap_err();
        assert_eq!(err.message(), "image-policy: the request names no image");
    }

    #[test]
    fn bad_patterns_are_option_errors() {
        let mut options = powerstrip_adapter::builtin::Options::new();
        options.insert("allow".into(), serde_json::json!(["busybox:[1"]));
        let err = builtin()
            .build(&options, &powerstrip_adapter::Context::in_memory())
            .err()
            .unwrap();
        assert!(
            err.starts_with("allow: bad image pattern \"busybox:[1\""),
            "{err}"
        );
        let err = builtin()
            .build(
                &powerstrip_adapter::builtin::Options::new(),
                &powerstrip_adapter::Context::in_memory(),
            )
            .err()
            .unwrap();
        assert!(err.contains("missing field `allow`"), "{err}");
    }
}

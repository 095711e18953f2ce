//! The `container_create` property, used by the fuzz target
//! `fuzz/fuzz_targets/container_create.rs` (and meant for a regression test in the adapter
//! crate, which would include this file with `#[path]` the way the config and protocol
//! crates' `tests/fuzz_regressions.rs` do):
//!
//! - `ContainerCreate::parse` never panics, nor does any getter on what it accepts;
//! - `to_body` gives a body `parse` accepts again, equal to the first (a float may drift by
//!   a ULP: see `json.rs`);
//! - `set_binds(binds()?)` and `set_mounts(mounts()?)` leave the body exactly as it was;
//! - a setter or remover that succeeds does what it says (`set_label(k, v)` then
//!   `label(k) == Some(v)`, …) and leaves a body `parse` accepts.

#[path = "json.rs"]
mod json;

use powerstrip_adapter::docker::ContainerCreate;
use serde_json::Value;

/// Keys the setters are tried with, besides the first few the body already has.
const KEYS: [&str; 2] = ["com.example.fuzz", "FUZZ"];
/// Values they are set to.
const VALUES: [&str; 3] = ["", "v", "a=b:c"];
/// How many of the body's own label and env keys are tried.
const OWN_KEYS: usize = 4;

/// Checks one input; panics, naming the broken property, when one does not hold.
pub fn check(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let Ok(create) = ContainerCreate::parse(text) else {
        return;
    };
    getters(&create);

    let body = create.to_body();
    let again = ContainerCreate::parse(&body)
        .unwrap_or_else(|e| panic!("to_body gave {body:?}, which parse refuses: {e}"));
    assert!(
        json::same_object(create.as_json(), again.as_json()),
        "{text:?} became {body:?}, which reads back as {:?}",
        again.to_body()
    );

    rewrites_nothing(&create);
    setters(&create);
}

fn getters(create: &ContainerCreate) {
    let _ = create.image();
    let _ = create.user();
    let _ = create.runs_as_root();
    let _ = create.env();
    let _ = create.labels();
    let _ = create.cmd();
    let _ = create.entrypoint();
    let _ = create.host_config();
    let _ = create.network_mode();
    let _ = create.binds();
    let _ = create.mounts();
}

/// Writing back what was read changes nothing, byte for byte.
fn rewrites_nothing(create: &ContainerCreate) {
    let body = create.to_body();
    let host_config_has = |name: &str| {
        create
            .host_config()
            .and_then(|hc| powerstrip_adapter::docker::field(hc, name))
            .is_some_and(Value::is_array)
    };
    if let (true, Ok(binds)) = (host_config_has("Binds"), create.binds()) {
        let mut edited = create.clone();
        if let Err(e) = edited.set_binds(binds) {
            panic!("set_binds of what binds() read failed: {e}");
        }
        assert_eq!(
            edited.to_body(),
            body,
            "set_binds(binds()) changed the body"
        );
    }
    if let (true, Ok(mounts)) = (host_config_has("Mounts"), create.mounts()) {
        let mut edited = create.clone();
        if let Err(e) = edited.set_mounts(mounts) {
            panic!("set_mounts of what mounts() read failed: {e}");
        }
        assert_eq!(
            edited.to_body(),
            body,
            "set_mounts(mounts()) changed the body"
        );
    }
}

fn setters(create: &ContainerCreate) {
    let labels: Vec<String> = create
        .labels()
        .iter()
        .take(OWN_KEYS)
        .map(|(k, _)| (*k).to_owned())
        .collect();
    let env: Vec<String> = create
        .env()
        .iter()
        .take(OWN_KEYS)
        .map(|(k, _)| (*k).to_owned())
        .collect();

    for key in KEYS
        .iter()
        .copied()
        .chain(labels.iter().map(String::as_str))
    {
        for value in VALUES {
            let mut edited = create.clone();
            if edited.set_label(key, value).is_ok() {
                assert_eq!(
                    edited.label(key),
                    Some(value),
                    "set_label({key:?}, {value:?})"
                );
                reparses(&edited, "set_label");
            }
        }
        let mut edited = create.clone();
        if edited.remove_label(key).is_ok() {
            assert_eq!(edited.label(key), None, "remove_label({key:?})");
            reparses(&edited, "remove_label");
        }
    }

    for key in KEYS.iter().copied().chain(env.iter().map(String::as_str)) {
        for value in VALUES {
            let mut edited = create.clone();
            if edited.set_env_var(key, value).is_ok() {
                assert_eq!(
                    edited.env_var(key),
                    Some(value),
                    "set_env_var({key:?}, {value:?})"
                );
                let entries = edited.env().iter().filter(|(k, _)| *k == key).count();
                assert_eq!(entries, 1, "set_env_var({key:?}) left {entries} entries");
                reparses(&edited, "set_env_var");
            }
        }
        let mut edited = create.clone();
        if edited.remove_env_var(key).is_ok() {
            assert!(
                edited.env().iter().all(|(k, _)| *k != key),
                "remove_env_var({key:?}) left an entry"
            );
            reparses(&edited, "remove_env_var");
        }
    }
}

/// What a setter left is a body `parse` accepts.
fn reparses(edited: &ContainerCreate, what: &str) {
    let body = edited.to_body();
    if let Err(e) = ContainerCreate::parse(&body) {
        panic!("after {what} the body {body:?} is refused: {e}");
    }
}

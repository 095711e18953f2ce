//! Open vSwitch for tests: the host's own (`scripts/ensure-ovs` starts it), with bridges of
//! a test's own removed when the test ends, and separate instances inside network
//! namespaces for the other "hosts" of multi-host tests ([`crate::host`]).

use std::process::Command;

/// Why OVS is needed, for [`crate::require`].
pub const INSTALL_HINT: &str = "scripts/ensure-ovs installs and starts Open vSwitch";

/// Whether the host's Open vSwitch answers; skips (prints why) or, under `CI=true`,
/// panics when it does not.
pub fn require() -> bool {
    let answers = Command::new("ovs-vsctl")
        .args(["--timeout=3", "show"])
        .output()
        .is_ok_and(|o| o.status.success());
    if answers {
        return true;
    }
    let problem = format!("Open vSwitch does not answer ({INSTALL_HINT})");
    if crate::in_ci() {
        panic!("{problem}; CI=true: missing components fail here");
    }
    eprintln!("SKIPPED: {problem}");
    false
}

/// A bridge name of this test process's own (`pst<pid><n>`, 15 characters at most),
/// removed from the host's OVS (with its ports) when dropped.
#[derive(Debug)]
pub struct TestBridge {
    name: String,
    db: Option<String>,
}

impl TestBridge {
    /// A fresh name on the host's OVS; the bridge itself is created by whoever uses it.
    pub fn new(n: u32) -> TestBridge {
        TestBridge {
            name: format!("pst{}{n}", std::process::id() % 100_000),
            db: None,
        }
    }

    /// The same, on the OVS whose database is `db` (`unix:/path`).
    pub fn on(n: u32, db: &str) -> TestBridge {
        TestBridge {
            name: format!("pst{}{n}", std::process::id() % 100_000),
            db: Some(db.to_owned()),
        }
    }

    /// Its name.
    pub fn name(&self) -> &str {
        &self.name
    }
}

impl Drop for TestBridge {
    fn drop(&mut self) {
        let mut command = Command::new("ovs-vsctl");
        command.arg("--timeout=5");
        if let Some(db) = &self.db {
            command.arg(format!("--db={db}"));
        }
        let _ = command.args(["--if-exists", "del-br", &self.name]).output();
    }
}

/// `ovs-vsctl` on the host's OVS (or `db`), its stdout; panics when it fails.
pub fn vsctl(db: Option<&str>, args: &[&str]) -> String {
    let mut command = Command::new("ovs-vsctl");
    command.arg("--timeout=5");
    if let Some(db) = db {
        command.arg(format!("--db={db}"));
    }
    let out = command
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("cannot run ovs-vsctl: {e}"));
    assert!(
        out.status.success(),
        "ovs-vsctl {}: {}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

//! Another "host" on this machine, for multi-host tests: a network namespace of its own,
//! joined to this one by a veth pair (the underlay), with its own Open vSwitch and its own
//! Docker daemon. Traffic goes only to loopback and to the namespaces tests make. Dropping
//! it stops its daemons and removes the namespace, the veth, its mounts and its files.

use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use tempfile::TempDir;

/// A host in a network namespace.
#[derive(Debug)]
pub struct Host {
    /// Its name in the test (`b`).
    name: String,
    /// The namespace (`ps-<name>-<pid>`).
    netns: String,
    /// Its files: OVS's database and sockets, Docker's roots (short path: unix sockets).
    dir: Option<TempDir>,
    /// The underlay: this namespace's end and address, the host's end and address.
    outer_veth: String,
    inner_veth: String,
    outer_ip: Ipv4Addr,
    inner_ip: Ipv4Addr,
    ovs: bool,
    dockerd: Option<Child>,
}

/// Runs `program args` and panics with its stderr when it fails.
fn run(program: &str, args: &[&str]) -> Output {
    let out = Command::new(program)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("cannot run {program}: {e}"));
    assert!(
        out.status.success(),
        "{program} {}: {}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

impl Host {
    /// Makes host `name`: the namespace, loopback up, and an underlay veth pair whose outer
    /// end (in this namespace) gets `10.231.<subnet>.1/24` and inner end `.2`.
    pub fn new(name: &str, subnet: u8) -> Host {
        let pid = std::process::id();
        let netns = format!("ps-{name}-{pid}");
        let tag = format!("{}{}", name.chars().next().unwrap_or('h'), pid % 100_000);
        let outer_veth = format!("psuo{tag}");
        let inner_veth = format!("psui{tag}");
        let dir = tempfile::Builder::new()
            .prefix("psh")
            .tempdir_in("/tmp")
            .unwrap_or_else(|e| panic!("temporary directory: {e}"));
        let outer_ip = Ipv4Addr::new(10, 231, subnet, 1);
        let inner_ip = Ipv4Addr::new(10, 231, subnet, 2);
        let host = Host {
            name: name.to_owned(),
            netns,
            dir: Some(dir),
            outer_veth,
            inner_veth,
            outer_ip,
            inner_ip,
            ovs: false,
            dockerd: None,
        };
        run("ip", &["netns", "add", &host.netns]);
        run(
            "ip",
            &[
                "link",
                "add",
                &host.outer_veth,
                "type",
                "veth",
                "peer",
                "name",
                &host.inner_veth,
            ],
        );
        run(
            "ip",
            &["link", "set", &host.inner_veth, "netns", &host.netns],
        );
        run(
            "ip",
            &[
                "addr",
                "add",
                &format!("{outer_ip}/24"),
                "dev",
                &host.outer_veth,
            ],
        );
        run("ip", &["link", "set", &host.outer_veth, "up"]);
        host.exec_ok(&["ip", "link", "set", "lo", "up"]);
        host.exec_ok(&[
            "ip",
            "addr",
            "add",
            &format!("{inner_ip}/24"),
            "dev",
            &host.inner_veth,
        ]);
        host.exec_ok(&["ip", "link", "set", &host.inner_veth, "up"]);
        host
    }

    /// Joins this host and `other` by a veth pair of their own (a wire between the two
    /// hosts, not through this namespace): this end gets `10.232.<subnet>.1/24`, `other`'s
    /// `.2`. The pair goes with either namespace.
    pub fn link(&self, other: &Host, subnet: u8) -> Link {
        let pid = std::process::id() % 100_000;
        let here = format!("psl{}{pid}", subnet % 100);
        let there = format!("psm{}{pid}", subnet % 100);
        let link = Link {
            here: (here, Ipv4Addr::new(10, 232, subnet, 1)),
            there: (there, Ipv4Addr::new(10, 232, subnet, 2)),
        };
        self.exec_ok(&[
            "ip",
            "link",
            "add",
            &link.here.0,
            "type",
            "veth",
            "peer",
            "name",
            &link.there.0,
            "netns",
            &other.netns,
        ]);
        for (host, (name, ip)) in [(self, &link.here), (other, &link.there)] {
            host.exec_ok(&["ip", "addr", "add", &format!("{ip}/24"), "dev", name]);
            host.exec_ok(&["ip", "link", "set", name, "up"]);
        }
        link
    }

    /// Its name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Its namespace's path, for `nsenter --net=`.
    pub fn netns_path(&self) -> PathBuf {
        Path::new("/var/run/netns").join(&self.netns)
    }

    /// Its underlay address (the inner end).
    pub fn address(&self) -> Ipv4Addr {
        self.inner_ip
    }

    /// This namespace's underlay address (the outer end).
    pub fn outer_address(&self) -> Ipv4Addr {
        self.outer_ip
    }

    /// The underlay interface inside it.
    pub fn underlay(&self) -> &str {
        &self.inner_veth
    }

    /// The underlay interface in this namespace.
    pub fn outer_underlay(&self) -> &str {
        &self.outer_veth
    }

    fn dir(&self) -> &Path {
        self.dir.as_ref().map_or(Path::new("/tmp"), |d| d.path())
    }

    /// A command run inside the namespace (`nsenter --net=`; not `ip netns exec`, which
    /// remounts /sys and upsets dockerd).
    pub fn command(&self, program: &str) -> Command {
        let mut command = Command::new("nsenter");
        command
            .arg(format!("--net={}", self.netns_path().display()))
            .arg(program);
        command
    }

    /// Runs `args` inside the namespace.
    pub fn exec(&self, args: &[&str]) -> Output {
        self.command(args[0])
            .args(&args[1..])
            .output()
            .unwrap_or_else(|e| panic!("cannot run nsenter: {e}"))
    }

    fn exec_ok(&self, args: &[&str]) -> Output {
        let out = self.exec(args);
        assert!(
            out.status.success(),
            "in {}: {}: {}",
            self.netns,
            args.join(" "),
            String::from_utf8_lossy(&out.stderr)
        );
        out
    }

    /// Starts an Open vSwitch of its own inside the namespace (database and daemon).
    pub fn start_ovs(&mut self) {
        let dir = self.dir().to_owned();
        let db = dir.join("conf.db");
        run(
            "ovsdb-tool",
            &[
                "create",
                &db.display().to_string(),
                "/usr/share/openvswitch/vswitch.ovsschema",
            ],
        );
        let d = |name: &str| dir.join(name).display().to_string();
        self.exec_ok(&[
            "ovsdb-server",
            &db.display().to_string(),
            &format!("--remote=punix:{}", d("db.sock")),
            &format!("--pidfile={}", d("ovsdb.pid")),
            &format!("--unixctl={}", d("ovsdb.ctl")),
            &format!("--log-file={}", d("ovsdb.log")),
            "--detach",
        ]);
        self.ovs = true;
        run(
            "ovs-vsctl",
            &[&format!("--db={}", self.ovsdb()), "--no-wait", "init"],
        );
        self.exec_ok(&[
            "ovs-vswitchd",
            &self.ovsdb(),
            &format!("--pidfile={}", d("vswitchd.pid")),
            &format!("--unixctl={}", d("vswitchd.ctl")),
            &format!("--log-file={}", d("vswitchd.log")),
            "--detach",
        ]);
    }

    /// Its OVSDB (`unix:/.../db.sock`).
    pub fn ovsdb(&self) -> String {
        format!("unix:{}", self.dir().join("db.sock").display())
    }

    /// Its `ovs-vswitchd` control socket.
    pub fn vswitchd(&self) -> String {
        self.dir().join("vswitchd.ctl").display().to_string()
    }

    /// Starts a Docker daemon of its own inside the namespace and copies `image` (from the
    /// main daemon at `main`) into it.
    pub fn start_dockerd(&mut self, main: &str, image: &str) {
        let dir = self.dir().to_owned();
        std::fs::write(dir.join("daemon.json"), "{}")
            .unwrap_or_else(|e| panic!("daemon.json: {e}"));
        let d = |name: &str| dir.join(name).display().to_string();
        let containerd = format!("ps-{}-{}", self.name, std::process::id());
        let log =
            std::fs::File::create(dir.join("dockerd.log")).unwrap_or_else(|e| panic!("log: {e}"));
        let child = self
            .command("dockerd")
            .args([
                format!("--data-root={}", d("data")),
                format!("--exec-root={}", d("exec")),
                format!("--pidfile={}", d("docker.pid")),
                format!("--config-file={}", d("daemon.json")),
                format!("--host=unix://{}", d("docker.sock")),
                format!("--containerd-namespace={containerd}"),
                format!("--containerd-plugins-namespace={containerd}-plugins"),
                "--iptables=false".into(),
                "--ip6tables=false".into(),
                "--ip-masq=false".into(),
            ])
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap_or_else(|e| panic!("log: {e}")))
            .stderr(log)
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start dockerd in {}: {e}", self.netns));
        self.dockerd = Some(child);
        let deadline = Instant::now() + Duration::from_secs(60);
        while !Command::new("docker")
            .args(["-H", &self.docker_host(), "version"])
            .output()
            .is_ok_and(|o| o.status.success())
        {
            assert!(
                Instant::now() < deadline,
                "dockerd in {} did not start:\n{}",
                self.netns,
                std::fs::read_to_string(dir.join("dockerd.log")).unwrap_or_default()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
        let copy = Command::new("sh")
            .args([
                "-c",
                &format!(
                    "docker -H {main} save {image} | docker -H {} load",
                    self.docker_host()
                ),
            ])
            .output()
            .unwrap_or_else(|e| panic!("copying {image}: {e}"));
        assert!(
            copy.status.success(),
            "copying {image}: {}",
            String::from_utf8_lossy(&copy.stderr)
        );
    }

    /// Its Docker daemon (`unix:///.../docker.sock`).
    pub fn docker_host(&self) -> String {
        format!("unix://{}", self.dir().join("docker.sock").display())
    }

    /// A file of its own directory (for sockets and logs of processes tests run in it).
    pub fn path(&self, name: &str) -> PathBuf {
        self.dir().join(name)
    }
}

/// A wire between two hosts made by [`Host::link`]: each end's interface and address.
#[derive(Clone, Debug)]
pub struct Link {
    /// The interface and address on the host that made the link.
    pub here: (String, Ipv4Addr),
    /// The interface and address on the other host.
    pub there: (String, Ipv4Addr),
}

impl Drop for Host {
    fn drop(&mut self) {
        let dir = self.dir().to_owned();
        if let Some(mut dockerd) = self.dockerd.take() {
            // Its containers first, then the daemon, cleanly (it unmounts what it mounted).
            let _ = Command::new("sh")
                .args([
                    "-c",
                    &format!(
                        "docker -H {h} rm -f $(docker -H {h} ps -aq) >/dev/null 2>&1",
                        h = self.docker_host()
                    ),
                ])
                .output();
            let _ = Command::new("kill")
                .args(["-TERM", &dockerd.id().to_string()])
                .output();
            let deadline = Instant::now() + Duration::from_secs(30);
            while dockerd.try_wait().ok().flatten().is_none() && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(100));
            }
            let _ = dockerd.kill();
            let _ = dockerd.wait();
            // Whatever is still mounted under its roots.
            let _ = Command::new("sh")
                .args([
                    "-c",
                    &format!(
                        "grep -o ' {}[^ ]*' /proc/mounts | sort -r | xargs -r -n1 umount -l",
                        dir.display()
                    ),
                ])
                .output();
        }
        if self.ovs {
            for pid in ["vswitchd.pid", "ovsdb.pid"] {
                if let Ok(pid) = std::fs::read_to_string(dir.join(pid)) {
                    let _ = Command::new("kill").arg(pid.trim()).output();
                }
            }
        }
        let _ = Command::new("ip")
            .args(["netns", "del", &self.netns])
            .output();
        let _ = Command::new("ip")
            .args(["link", "del", &self.outer_veth])
            .output();
        drop(self.dir.take());
    }
}

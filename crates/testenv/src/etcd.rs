//! Real etcd for tests (Debian's `etcd-server`).

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use tempfile::TempDir;

use crate::free_port;

/// Why etcd is needed, for [`crate::require`].
pub const INSTALL_HINT: &str = "apt-get install etcd-server; scripts/test installs it";

/// One member: its ports and its process.
#[derive(Debug)]
struct Member {
    name: String,
    client_port: u16,
    peer_port: u16,
    data: PathBuf,
    /// The watchdog shell, which runs etcd as its child (`None` while stopped).
    process: Option<Child>,
}

/// An etcd cluster of one or more members on loopback, stopped and removed when dropped.
#[derive(Debug)]
pub struct EtcdCluster {
    members: Vec<Member>,
    /// Besides loopback, the addresses clients reach the members at (another "host" of a
    /// multi-host test cannot reach this namespace's loopback); the first is advertised.
    public: Vec<std::net::Ipv4Addr>,
    initial_cluster: String,
    token: String,
    dir: Option<TempDir>,
}

impl EtcdCluster {
    /// Starts a cluster of `size` members and waits until every one is healthy.
    pub fn start(size: usize) -> EtcdCluster {
        Self::start_on(size, None)
    }

    /// [`EtcdCluster::start`], its members also listening on `public` (an address of this
    /// namespace that other namespaces reach), which [`EtcdCluster::endpoints`] then names.
    pub fn start_on(size: usize, public: Option<std::net::Ipv4Addr>) -> EtcdCluster {
        Self::start_on_each(size, &public.into_iter().collect::<Vec<_>>())
    }

    /// [`EtcdCluster::start`], its members also listening on each address of `public`
    /// (addresses of this namespace that several other namespaces reach, one each);
    /// [`EtcdCluster::endpoints_on`] names the members at one of them.
    pub fn start_on_each(size: usize, public: &[std::net::Ipv4Addr]) -> EtcdCluster {
        let public = public.to_vec();
        let dir = tempfile::Builder::new()
            .prefix("powerstrip-etcd-")
            .tempdir()
            .unwrap_or_else(|e| panic!("cannot make a directory for etcd: {e}"));
        let members: Vec<Member> = (0..size)
            .map(|i| Member {
                name: format!("m{i}"),
                client_port: free_port(),
                peer_port: free_port(),
                data: dir.path().join(format!("m{i}")),
                process: None,
            })
            .collect();
        let initial_cluster = members
            .iter()
            .map(|m| format!("{}=http://127.0.0.1:{}", m.name, m.peer_port))
            .collect::<Vec<_>>()
            .join(",");
        let token = format!(
            "powerstrip-test-{}-{}",
            std::process::id(),
            members.first().map_or(0, |m| m.client_port)
        );
        let mut cluster = EtcdCluster {
            members,
            public,
            initial_cluster,
            token,
            dir: Some(dir),
        };
        for i in 0..size {
            cluster.spawn(i, "new");
        }
        for i in 0..size {
            cluster.wait_healthy(i, Duration::from_secs(30));
        }
        cluster
    }

    fn spawn(&mut self, i: usize, state: &str) {
        let m = &self.members[i];
        let args = [
            format!("--name={}", m.name),
            format!("--data-dir={}", m.data.display()),
            format!(
                "--listen-client-urls=http://127.0.0.1:{p}{}",
                self.public
                    .iter()
                    .map(|ip| format!(",http://{ip}:{p}", p = m.client_port))
                    .collect::<String>(),
                p = m.client_port
            ),
            format!(
                "--advertise-client-urls=http://{}:{}",
                self.host(),
                m.client_port
            ),
            format!("--listen-peer-urls=http://127.0.0.1:{}", m.peer_port),
            format!(
                "--initial-advertise-peer-urls=http://127.0.0.1:{}",
                m.peer_port
            ),
            format!("--initial-cluster={}", self.initial_cluster),
            format!("--initial-cluster-state={state}"),
            format!("--initial-cluster-token={}", self.token),
            // Fast elections, so a killed member's role moves within a second or two.
            "--heartbeat-interval=50".into(),
            "--election-timeout=500".into(),
            "--log-level=error".into(),
        ];
        // The watchdog: runs etcd, and kills it as soon as this process is gone — also when
        // the test binary exits without dropping the cluster (a shared one is never dropped).
        let watchdog = format!(
            "etcd \"$@\" >/dev/null 2>&1 & child=$!; \
             trap 'kill -9 $child 2>/dev/null; exit 0' TERM INT; \
             while kill -0 {parent} 2>/dev/null && kill -0 $child 2>/dev/null; do sleep 0.2; done; \
             kill -9 $child 2>/dev/null; wait $child 2>/dev/null; \
             kill -0 {parent} 2>/dev/null || {{ rm -rf '{data}'; rmdir \"$(dirname '{data}')\" 2>/dev/null; }}",
            parent = std::process::id(),
            data = m.data.display(),
        );
        let child = Command::new("sh")
            .arg("-c")
            .arg(watchdog)
            .arg("sh")
            .args(args)
            .stdin(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start etcd: {e}"));
        self.members[i].process = Some(child);
    }

    fn wait_healthy(&self, i: usize, within: Duration) {
        let deadline = Instant::now() + within;
        while !healthy(self.members[i].client_port) {
            assert!(
                Instant::now() < deadline,
                "etcd member {} did not become healthy within {within:?}",
                self.members[i].name
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// The address clients use.
    fn host(&self) -> String {
        self.public
            .first()
            .map_or_else(|| "127.0.0.1".to_owned(), ToString::to_string)
    }

    /// Every member's client URL.
    pub fn endpoints(&self) -> Vec<String> {
        (0..self.members.len()).map(|i| self.endpoint(i)).collect()
    }

    /// Every member's client URL at `address`, one of those it was started on.
    pub fn endpoints_on(&self, address: std::net::Ipv4Addr) -> Vec<String> {
        self.members
            .iter()
            .map(|m| format!("http://{address}:{}", m.client_port))
            .collect()
    }

    /// Member `i`'s client URL.
    pub fn endpoint(&self, i: usize) -> String {
        format!("http://{}:{}", self.host(), self.members[i].client_port)
    }

    /// Kills member `i` with SIGKILL (its data stays, for [`EtcdCluster::restart`]).
    pub fn kill(&mut self, i: usize) {
        if let Some(mut watchdog) = self.members[i].process.take() {
            // The watchdog kills etcd at SIGTERM with SIGKILL, then exits.
            let _ = Command::new("kill")
                .args(["-TERM", &watchdog.id().to_string()])
                .status();
            let _ = watchdog.wait();
        }
        let port = self.members[i].client_port;
        let deadline = Instant::now() + Duration::from_secs(5);
        while TcpStream::connect(("127.0.0.1", port)).is_ok() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Starts member `i` again on its data, and waits until it is healthy.
    pub fn restart(&mut self, i: usize) {
        self.spawn(i, "existing");
        self.wait_healthy(i, Duration::from_secs(30));
    }

    /// Whether member `i` answers its health check.
    pub fn is_healthy(&self, i: usize) -> bool {
        healthy(self.members[i].client_port)
    }
}

impl Drop for EtcdCluster {
    fn drop(&mut self) {
        for i in 0..self.members.len() {
            self.kill(i);
        }
        drop(self.dir.take());
    }
}

/// etcd's `/health` on a client port says `"health":"true"`.
fn healthy(port: u16) -> bool {
    let Ok(mut stream) = TcpStream::connect(("127.0.0.1", port)) else {
        return false;
    };
    let _ = stream.set_read_timeout(Some(Duration::from_secs(2)));
    let request = "GET /health HTTP/1.1\r\nHost: etcd\r\nConnection: close\r\n\r\n";
    if stream.write_all(request.as_bytes()).is_err() {
        return false;
    }
    let mut answer = String::new();
    let _ = stream.read_to_string(&mut answer);
    answer.contains("\"health\":\"true\"")
}

/// One single-member etcd shared by every test of a test binary (started by the first
/// that asks; removed by its watchdog when the binary exits). Tests keep apart by using
/// prefixes of their own. `None` when etcd is not installed (and not `CI=true`).
pub fn shared() -> Option<&'static EtcdCluster> {
    static SHARED: OnceLock<Option<EtcdCluster>> = OnceLock::new();
    SHARED
        .get_or_init(|| crate::require("etcd", INSTALL_HINT).then(|| EtcdCluster::start(1)))
        .as_ref()
}

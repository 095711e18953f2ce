//! TLS in Docker's model (docs/operations.md, Security): the binary on
//! `tcp://127.0.0.1:0 --tlsverify` in front of the real daemon, used by the real docker CLI
//! with client certificates; and an `https://` adapter verified against its `ca`.
//!
//! Certificates are made here with rcgen, in a temporary directory: a CA, a server
//! certificate for 127.0.0.1 and localhost, a client certificate, an unrelated CA with its
//! own client certificate, and a forged CA bearing the first one's name. The docker CLI tests need the real daemon
//! (`scripts/ensure-docker`); under `CI=true` its absence fails.

#![allow(clippy::unwrap_used)]

mod support;

use std::path::{Path, PathBuf};
use std::sync::Arc;

use http::StatusCode;
use powerstrip_adapter::docker::ContainerCreate;
use powerstrip_adapter::net::{Address, Listener};
use powerstrip_adapter::tls::{ServerTls, server_config};
use powerstrip_adapter::{Adapter, ClientRequest, HookError, async_trait};
use powerstrip_testkit::{FakeDocker, Responder, TestProxy};
use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose,
};
use serde_json::json;
use support::{IMAGE, ProxyProcess, Run, StartedProxy, direct, require_docker, run_command};
use tempfile::TempDir;

// ---------------------------------------------------------------------------------------
// Certificates

/// The PEM files of two unrelated CAs and the certificates they signed.
struct Pki {
    dir: TempDir,
}

/// A CA named `common_name`, written as `<file>.pem`; its parameters and key, to sign with.
fn new_ca(dir: &Path, file: &str, common_name: &str) -> Issuer<'static, KeyPair> {
    let mut params = CertificateParams::new(Vec::new()).unwrap();
    params
        .distinguished_name
        .push(DnType::CommonName, common_name);
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    let key = KeyPair::generate().unwrap();
    let cert = params.self_signed(&key).unwrap();
    std::fs::write(dir.join(format!("{file}.pem")), cert.pem()).unwrap();
    Issuer::new(params, key)
}

/// A certificate for `names` (IPs or DNS names) signed by `issuer`, written as
/// `<file>.pem` and `<file>-key.pem`.
fn leaf(
    dir: &Path,
    file: &str,
    names: &[&str],
    purpose: ExtendedKeyUsagePurpose,
    issuer: &Issuer<'static, KeyPair>,
) {
    let mut params =
        CertificateParams::new(names.iter().map(|n| (*n).to_owned()).collect::<Vec<_>>()).unwrap();
    params
        .distinguished_name
        .push(DnType::CommonName, format!("powerstrip test {file}"));
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    params.extended_key_usages = vec![purpose];
    params.use_authority_key_identifier_extension = true;
    let key = KeyPair::generate().unwrap();
    let cert = params.signed_by(&key, issuer).unwrap();
    std::fs::write(dir.join(format!("{file}.pem")), cert.pem()).unwrap();
    std::fs::write(dir.join(format!("{file}-key.pem")), key.serialize_pem()).unwrap();
}

impl Pki {
    fn new() -> Pki {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path();
        let ca = new_ca(path, "ca", "powerstrip test CA");
        leaf(
            path,
            "server",
            &["127.0.0.1", "localhost"],
            ExtendedKeyUsagePurpose::ServerAuth,
            &ca,
        );
        leaf(
            path,
            "client",
            &[],
            ExtendedKeyUsagePurpose::ClientAuth,
            &ca,
        );
        let other = new_ca(path, "other-ca", "another CA");
        leaf(
            path,
            "other-client",
            &[],
            ExtendedKeyUsagePurpose::ClientAuth,
            &other,
        );
        // A CA with the trusted CA's name but its own key: the docker CLI offers its
        // certificate (the name matches what the server asks for), so only the server's
        // signature check can refuse it.
        let forged = new_ca(path, "forged-ca", "powerstrip test CA");
        leaf(
            path,
            "forged-client",
            &[],
            ExtendedKeyUsagePurpose::ClientAuth,
            &forged,
        );
        Pki { dir }
    }

    /// A file's absolute path.
    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// A file's absolute path as a flag value.
    fn arg(&self, name: &str) -> String {
        self.path(name).display().to_string()
    }
}

// ---------------------------------------------------------------------------------------
// The docker CLI over TLS

/// The binary on `tcp://127.0.0.1:0` requiring client certificates from the test CA, in
/// front of the real daemon; and its `tcp://127.0.0.1:PORT`.
fn tls_proxy(pki: &Pki) -> (StartedProxy, String) {
    let proxy = ProxyProcess::options()
        .listen("tcp://127.0.0.1:0")
        .args([
            "--tlsverify",
            "--tlscacert",
            &pki.arg("ca.pem"),
            "--tlscert",
            &pki.arg("server.pem"),
            "--tlskey",
            &pki.arg("server-key.pem"),
        ])
        .start();
    let host = proxy.hosts[0].clone();
    assert!(
        host.starts_with("tcp://127.0.0.1:") && !host.ends_with(":0"),
        "the printed DOCKER_HOST names the real port: {host}"
    );
    (proxy, host)
}

/// Runs the docker CLI against `host` with these TLS flags before `args`, with no
/// certificates of its own to fall back on (`DOCKER_CERT_PATH` is an empty directory).
async fn docker_tls(host: &str, tls: &[String], args: &[&str]) -> Run {
    let empty = tempfile::tempdir().unwrap();
    let cert_path = format!("DOCKER_CERT_PATH={}", empty.path().display());
    let mut all: Vec<&str> = vec![&cert_path, "docker"];
    all.extend(tls.iter().map(String::as_str));
    all.extend(["-H", host]);
    all.extend_from_slice(args);
    run_command("env", &all, host, None).await
}

fn client_flags(pki: &Pki, cert: &str) -> Vec<String> {
    vec![
        "--tlsverify".into(),
        "--tlscacert".into(),
        pki.arg("ca.pem"),
        "--tlscert".into(),
        pki.arg(&format!("{cert}.pem")),
        "--tlskey".into(),
        pki.arg(&format!("{cert}-key.pem")),
    ]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn docker_with_a_client_certificate_from_the_ca_works_as_direct() {
    if !require_docker() {
        return;
    }
    let pki = Pki::new();
    let (proxy, host) = tls_proxy(&pki);
    let tls = client_flags(&pki, "client");

    for args in [
        &["version"][..],
        &["run", "--rm", "--network", "none", IMAGE, "echo", "tls"][..],
    ] {
        let direct_run = support::docker(&direct(), args, None).await;
        assert_eq!(direct_run.code, 0, "direct {args:?}: {direct_run:?}");
        let through = docker_tls(&host, &tls, args).await;
        assert_eq!(
            through,
            direct_run,
            "{args:?} over TLS differs from direct\n{}",
            proxy.log()
        );
    }
    let text = proxy.metrics().await;
    assert!(
        text.contains("powerstrip_requests_total{"),
        "the requests went through the proxy:\n{text}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn docker_without_a_certificate_from_the_ca_is_refused_and_nothing_is_served() {
    if !require_docker() {
        return;
    }
    let pki = Pki::new();
    let (proxy, host) = tls_proxy(&pki);

    let cases: [(&str, Vec<String>); 4] = [
        (
            "a client certificate from another CA",
            client_flags(&pki, "other-client"),
        ),
        (
            "a client certificate from a CA forging the trusted one's name",
            client_flags(&pki, "forged-client"),
        ),
        (
            "no client certificate",
            vec![
                "--tlsverify".into(),
                "--tlscacert".into(),
                pki.arg("ca.pem"),
            ],
        ),
        ("no TLS at all", Vec::new()),
    ];
    for (what, tls) in cases {
        let run = docker_tls(&host, &tls, &["version"]).await;
        assert_ne!(run.code, 0, "{what}: {run:?}");
        assert!(!run.out().contains("Server:"), "{what}: {run:?}");
        // Refused by TLS, not by anything else.
        assert!(run.stderr.to_lowercase().contains("tls"), "{what}: {run:?}");
    }
    let text = proxy.metrics().await;
    assert!(
        !text.contains("powerstrip_requests_total{"),
        "no request may have been served:\n{text}"
    );
}

// ---------------------------------------------------------------------------------------
// An https:// adapter

/// Labels every container it sees created.
struct Labeller;

#[async_trait]
impl Adapter for Labeller {
    async fn pre_hook(&self, mut request: ClientRequest) -> Result<ClientRequest, HookError> {
        let mut create = ContainerCreate::from_request(&request)?;
        create.set_label("served-over", "tls")?;
        create.write_to(&mut request);
        Ok(request)
    }
}

/// Serves [`Labeller`] over TLS with the test server certificate; its port.
async fn serve_labeller(pki: &Pki) -> (u16, tokio::task::JoinHandle<()>) {
    let listener = Listener::bind(&Address::Tcp {
        host: "127.0.0.1".into(),
        port: 0,
    })
    .await
    .unwrap();
    let Address::Tcp { port, .. } = listener.local_address() else {
        panic!("a TCP listener")
    };
    let tls = server_config(&ServerTls {
        cert: pki.path("server.pem"),
        key: pki.path("server-key.pem"),
        client_ca: None,
    })
    .unwrap();
    let server = tokio::spawn(powerstrip_adapter::serve::serve_listeners(
        Arc::new(Labeller),
        vec![listener.with_tls(tls)],
        std::future::pending(),
    ));
    (port, server)
}

fn https_config(port: u16, ca: &Path) -> String {
    format!(
        "version = 1\n[adapters]\ntls = {{ url = \"https://localhost:{port}/\", ca = {:?} }}\n\
         [[endpoints]]\nmatch = \"POST /*/containers/create\"\npre = [\"tls\"]\n",
        ca.display().to_string()
    )
}

#[tokio::test]
async fn an_https_adapter_is_verified_against_its_ca() {
    let pki = Pki::new();
    let (port, server) = serve_labeller(&pki).await;
    let docker = FakeDocker::builder()
        .route("POST", "/*/containers/create", Responder::echo())
        .start_unix()
        .await;
    let create = json!({"Image": "busybox", "Labels": {"team": "a"}});

    let trusted =
        TestProxy::start(&docker.address(), &https_config(port, &pki.path("ca.pem"))).await;
    let r = trusted
        .client()
        .post_json("/v1.41/containers/create", &create)
        .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text());
    assert_eq!(
        docker.requests()[0].json()["Labels"],
        json!({"team": "a", "served-over": "tls"})
    );

    let wrong = TestProxy::start(
        &docker.address(),
        &https_config(port, &pki.path("other-ca.pem")),
    )
    .await;
    let r = wrong
        .client()
        .post_json("/v1.41/containers/create", &create)
        .await;
    assert_eq!(r.status, StatusCode::BAD_GATEWAY);
    assert!(
        r.message()
            .starts_with("powerstrip: adapter \"tls\" failed in pre-hook: "),
        "{}",
        r.message()
    );
    assert_eq!(docker.requests().len(), 1, "Docker is not called");
    server.abort();
}

//! The transfer protocol end to end over loopback TCP, with an in-memory fake backend on
//! each side: what arrives is what was sent, increments only when both sides can, refusals
//! and failures surface as typed errors, and a broken or abandoned transfer leaves
//! nothing behind on the target.
#![allow(clippy::unwrap_used)] // test helpers: a failed unwrap is a failed test

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::io::Cursor;
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use bytes::Bytes;
use http::{HeaderMap, HeaderValue, Request, Response, StatusCode};
use http_body_util::{BodyExt as _, Full, StreamBody};
use hyper::body::Frame;
use hyper_util::rt::TokioIo;
use powerstrip_volumes::backend::{Backend, BackendError, SendStream, Usage};
use powerstrip_volumes::transfer::{
    self, Authorize, BYTES_TRAILER, CHECKSUM_TRAILER, Compression, Fetched, PARENT_HEADER, Refusal,
    SendRequest, TransferError,
};
use tokio::io::{AsyncRead, AsyncReadExt as _, ReadBuf};
use tokio::net::TcpListener;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use xxhash_rust::xxh3::xxh3_128;

// ---------------------------------------------------------------------------------------
// A fake backend: snapshots are byte blobs in memory.
//
// Its send stream is `FAKE <length> <parent or ->\n` and the snapshot's bytes; its receive
// reads the header, checks that the parent is here, reads exactly <length> bytes (like
// `btrfs receive`, it stops at its own end marker unless `read_to_eof`), and only then
// stores the snapshot: a receive that fails or is dropped leaves nothing.
// ---------------------------------------------------------------------------------------

/// How the fake's next sends behave.
#[derive(Clone, Copy, Debug)]
enum SendMode {
    /// The whole snapshot, then a clean exit.
    Complete,
    /// Half the snapshot, a clean end of the stream, then the producer fails
    /// (`btrfs send` exiting non-zero after writing part of its stream).
    FailHalfway,
    /// Pseudo-random bytes under a header announcing far more; after this many the
    /// producer stalls until it is dropped.
    Stall(u64),
}

#[derive(Debug)]
struct Fake {
    incremental: bool,
    /// Whether receive reads its stream to the end, or stops at its own end.
    read_to_eof: bool,
    mode: Mutex<SendMode>,
    datasets: Mutex<BTreeMap<String, Bytes>>,
    snapshots: Mutex<BTreeMap<String, Bytes>>,
    /// Every send: (snapshot, parent).
    sends: Mutex<Vec<(String, Option<String>)>>,
    /// Send streams not yet dropped (a real producer is killed when they are).
    live_sends: Arc<AtomicUsize>,
    /// Receives in progress (a real one's child is killed when they are dropped).
    live_receives: Arc<AtomicUsize>,
    /// Bytes read by receives so far.
    received: Arc<AtomicU64>,
}

impl Fake {
    fn new(incremental: bool) -> Self {
        Self {
            incremental,
            read_to_eof: true,
            mode: Mutex::new(SendMode::Complete),
            datasets: Mutex::default(),
            snapshots: Mutex::default(),
            sends: Mutex::default(),
            live_sends: Arc::default(),
            live_receives: Arc::default(),
            received: Arc::default(),
        }
    }

    fn with_dataset(self, id: &str, data: Vec<u8>) -> Self {
        self.datasets
            .lock()
            .unwrap()
            .insert(id.to_owned(), data.into());
        self
    }

    fn with_snapshot(self, id: &str, data: Vec<u8>) -> Self {
        self.snapshots
            .lock()
            .unwrap()
            .insert(id.to_owned(), data.into());
        self
    }

    fn stopping_at_its_end(mut self) -> Self {
        self.read_to_eof = false;
        self
    }

    fn sending(self, mode: SendMode) -> Self {
        *self.mode.lock().unwrap() = mode;
        self
    }

    fn snapshot_data(&self, id: &str) -> Option<Bytes> {
        self.snapshots.lock().unwrap().get(id).cloned()
    }

    fn snapshot_ids(&self) -> Vec<String> {
        self.snapshots.lock().unwrap().keys().cloned().collect()
    }

    fn sends(&self) -> Vec<(String, Option<String>)> {
        self.sends.lock().unwrap().clone()
    }
}

/// Counts a live thing; uncounts it when dropped.
struct Live(Arc<AtomicUsize>);

impl Live {
    fn new(count: &Arc<AtomicUsize>) -> Self {
        count.fetch_add(1, Ordering::SeqCst);
        Self(count.clone())
    }
}

impl Drop for Live {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

/// The fake's send stream.
struct FakeSendReader {
    /// The header.
    header: Cursor<Vec<u8>>,
    /// The data.
    data: Cursor<Bytes>,
    /// Stall mode: pseudo-random bytes still to produce before stalling, and the state.
    generate: Option<(u64, u64)>,
    /// Told when the stream ends.
    at_end: Option<oneshot::Sender<()>>,
    _live: Live,
}

impl AsyncRead for FakeSendReader {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let this = &mut *self;
        if this.header.position() < this.header.get_ref().len() as u64 {
            return Pin::new(&mut this.header).poll_read(cx, buf);
        }
        if this.data.position() < this.data.get_ref().len() as u64 {
            return Pin::new(&mut this.data).poll_read(cx, buf);
        }
        if let Some((left, state)) = &mut this.generate {
            if *left == 0 {
                // Stalled, like a producer stuck on a disk: only dropping ends it.
                return Poll::Pending;
            }
            let n = (buf.remaining() as u64).min(*left).min(64 * 1024) as usize;
            let mut chunk = Vec::with_capacity(n + 8);
            while chunk.len() < n {
                *state ^= *state << 13;
                *state ^= *state >> 7;
                *state ^= *state << 17;
                chunk.extend_from_slice(&state.to_le_bytes());
            }
            buf.put_slice(&chunk[..n]);
            *left -= n as u64;
            return Poll::Ready(Ok(()));
        }
        if let Some(at_end) = this.at_end.take() {
            let _ = at_end.send(());
        }
        Poll::Ready(Ok(()))
    }
}

fn failed(step: &str, reason: impl ToString) -> BackendError {
    BackendError::Failed {
        step: step.to_owned(),
        reason: reason.to_string(),
    }
}

#[async_trait]
impl Backend for Fake {
    fn kind(&self) -> &'static str {
        "fake"
    }

    fn pool(&self) -> PathBuf {
        PathBuf::from("/nonexistent/fake-pool")
    }

    fn limits_size(&self) -> bool {
        false
    }

    fn incremental(&self) -> bool {
        self.incremental
    }

    fn dataset_path(&self, id: &str) -> PathBuf {
        self.pool().join("datasets").join(id)
    }

    fn snapshot_path(&self, id: &str) -> PathBuf {
        self.pool().join("snapshots").join(id)
    }

    async fn prepare(&self) -> Result<(), BackendError> {
        Ok(())
    }

    async fn create(&self, id: &str, _limit: Option<u64>) -> Result<PathBuf, BackendError> {
        self.datasets
            .lock()
            .unwrap()
            .entry(id.to_owned())
            .or_default();
        Ok(self.dataset_path(id))
    }

    async fn set_limit(&self, _id: &str, _limit: Option<u64>) -> Result<(), BackendError> {
        Ok(())
    }

    async fn destroy(&self, id: &str) -> Result<(), BackendError> {
        self.datasets.lock().unwrap().remove(id);
        Ok(())
    }

    async fn snapshot(&self, id: &str, snapshot: &str) -> Result<(), BackendError> {
        if self.snapshots.lock().unwrap().contains_key(snapshot) {
            return Ok(());
        }
        let data = self
            .datasets
            .lock()
            .unwrap()
            .get(id)
            .cloned()
            .ok_or_else(|| BackendError::NotFound {
                what: format!("dataset {id}"),
            })?;
        self.snapshots
            .lock()
            .unwrap()
            .insert(snapshot.to_owned(), data);
        Ok(())
    }

    async fn clone_snapshot(
        &self,
        snapshot: &str,
        id: &str,
        _limit: Option<u64>,
    ) -> Result<PathBuf, BackendError> {
        let data = self
            .snapshot_data(snapshot)
            .ok_or_else(|| BackendError::NotFound {
                what: format!("snapshot {snapshot}"),
            })?;
        self.datasets
            .lock()
            .unwrap()
            .entry(id.to_owned())
            .or_insert(data);
        Ok(self.dataset_path(id))
    }

    async fn delete_snapshot(&self, snapshot: &str) -> Result<(), BackendError> {
        self.snapshots.lock().unwrap().remove(snapshot);
        Ok(())
    }

    async fn datasets(&self) -> Result<Vec<String>, BackendError> {
        Ok(self.datasets.lock().unwrap().keys().cloned().collect())
    }

    async fn snapshots(&self) -> Result<Vec<String>, BackendError> {
        Ok(self.snapshot_ids())
    }

    async fn send(&self, snapshot: &str, parent: Option<&str>) -> Result<SendStream, BackendError> {
        let data = self
            .snapshot_data(snapshot)
            .ok_or_else(|| BackendError::NotFound {
                what: format!("snapshot {snapshot}"),
            })?;
        self.sends
            .lock()
            .unwrap()
            .push((snapshot.to_owned(), parent.map(str::to_owned)));
        let parent = parent.unwrap_or("-");
        let mode = *self.mode.lock().unwrap();
        let live = Live::new(&self.live_sends);
        let stream = match mode {
            SendMode::Complete => SendStream {
                reader: Box::pin(FakeSendReader {
                    header: Cursor::new(header(data.len() as u64, parent)),
                    data: Cursor::new(data),
                    generate: None,
                    at_end: None,
                    _live: live,
                }),
                done: Box::pin(async { Ok(()) }),
            },
            SendMode::FailHalfway => {
                let (at_end, ended) = oneshot::channel();
                let half = data.slice(..data.len() / 2);
                SendStream {
                    reader: Box::pin(FakeSendReader {
                        header: Cursor::new(header(data.len() as u64, parent)),
                        data: Cursor::new(half),
                        generate: None,
                        at_end: Some(at_end),
                        _live: live,
                    }),
                    done: Box::pin(async move {
                        let _ = ended.await;
                        Err(failed(
                            "btrfs send",
                            "exited with status 1: ERROR: send ioctl failed with -5: Input/output error",
                        ))
                    }),
                }
            }
            SendMode::Stall(after) => SendStream {
                reader: Box::pin(FakeSendReader {
                    header: Cursor::new(header(1 << 40, parent)),
                    data: Cursor::new(Bytes::new()),
                    generate: Some((after, 0x9e37_79b9_7f4a_7c15)),
                    at_end: None,
                    _live: live,
                }),
                done: Box::pin(std::future::pending()),
            },
        };
        Ok(stream)
    }

    async fn receive(
        &self,
        snapshot: &str,
        mut stream: Pin<Box<dyn AsyncRead + Send>>,
    ) -> Result<(), BackendError> {
        let _live = Live::new(&self.live_receives);
        let mut header = Vec::new();
        loop {
            let byte = stream
                .read_u8()
                .await
                .map_err(|e| failed("reading the header", e))?;
            if byte == b'\n' {
                break;
            }
            header.push(byte);
            if header.len() > 200 {
                return Err(failed("reading the header", "too long"));
            }
        }
        let header = String::from_utf8(header).map_err(|e| failed("reading the header", e))?;
        let fields: Vec<&str> = header.split(' ').collect();
        let [magic, length, parent] = fields[..] else {
            return Err(failed("reading the header", header.clone()));
        };
        let length: u64 = length
            .parse()
            .map_err(|e| failed("reading the header", e))?;
        if magic != "FAKE" {
            return Err(failed("reading the header", header.clone()));
        }
        if parent != "-" && !self.snapshots.lock().unwrap().contains_key(parent) {
            return Err(BackendError::NotFound {
                what: format!("parent snapshot {parent}"),
            });
        }
        let mut data = Vec::with_capacity(length.min(1 << 31) as usize);
        let mut chunk = vec![0; 64 * 1024];
        while (data.len() as u64) < length {
            let want = (length - data.len() as u64).min(chunk.len() as u64) as usize;
            let n = stream
                .read(&mut chunk[..want])
                .await
                .map_err(|e| failed("receiving", e))?;
            if n == 0 {
                return Err(failed("receiving", "the stream ended early"));
            }
            data.extend_from_slice(&chunk[..n]);
            self.received.fetch_add(n as u64, Ordering::SeqCst);
        }
        if self.read_to_eof {
            let mut rest = Vec::new();
            stream
                .read_to_end(&mut rest)
                .await
                .map_err(|e| failed("receiving", e))?;
            if !rest.is_empty() {
                return Err(failed("receiving", "data after the end"));
            }
        }
        self.snapshots
            .lock()
            .unwrap()
            .insert(snapshot.to_owned(), data.into());
        Ok(())
    }

    async fn pool_usage(&self) -> Result<Usage, BackendError> {
        Ok(Usage::default())
    }

    async fn usage(&self, _id: &str) -> Result<Usage, BackendError> {
        Ok(Usage::default())
    }

    async fn clean_incoming(&self) -> Result<(), BackendError> {
        Ok(())
    }
}

/// The header of the fake's stream.
fn header(length: u64, parent: &str) -> Vec<u8> {
    format!("FAKE {length} {parent}\n").into_bytes()
}

/// The fake's stream: header, then data.
fn framed(data: &[u8], length: u64, parent: &str) -> Vec<u8> {
    let mut out = header(length, parent);
    out.extend_from_slice(data);
    out
}

/// Deterministic data, a mix of random, text-like and zero megabytes.
fn mixed(size: usize, seed: u64) -> Vec<u8> {
    let mut state = seed | 1;
    let mut next = move || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        state
    };
    let words: [&[u8]; 8] = [
        b"volume ",
        b"dataset ",
        b"snapshot ",
        b"node ",
        b"move ",
        b"{\"id\": ",
        b"42, ",
        b"\n",
    ];
    let mut out = Vec::with_capacity(size);
    let mut block = 0;
    while out.len() < size {
        let end = (out.len() + (256 << 10)).min(size);
        match block % 3 {
            0 => {
                while out.len() < end {
                    out.extend_from_slice(&next().to_le_bytes());
                }
            }
            1 => {
                while out.len() < end {
                    out.extend_from_slice(words[(next() % 8) as usize]);
                }
            }
            _ => out.resize(end, 0),
        }
        out.truncate(end);
        block += 1;
    }
    out
}

// ---------------------------------------------------------------------------------------
// Harness
// ---------------------------------------------------------------------------------------

const TICKET: &str = "ticket-7f3a";

/// Lets through requests with [`TICKET`]; otherwise 403.
struct TicketCheck;

#[async_trait]
impl Authorize for TicketCheck {
    async fn authorize(&self, request: &SendRequest) -> Result<(), Refusal> {
        if request.ticket == TICKET {
            Ok(())
        } else {
            Err(Refusal::forbidden(format!(
                "no valid ticket to move dataset {}",
                request.dataset
            )))
        }
    }
}

/// Refuses everything with the same refusal.
struct Refuse(Refusal);

#[async_trait]
impl Authorize for Refuse {
    async fn authorize(&self, _request: &SendRequest) -> Result<(), Refusal> {
        Err(self.0.clone())
    }
}

/// A source node: [`transfer::serve`] on a port of its own.
struct Source {
    backend: Arc<Fake>,
    endpoint: String,
    stop: CancellationToken,
    task: JoinHandle<()>,
}

async fn source(backend: Fake, authorize: impl Authorize + 'static) -> Source {
    let backend = Arc::new(backend);
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let endpoint = format!("http://{}", listener.local_addr().unwrap());
    let stop = CancellationToken::new();
    let task = tokio::spawn(transfer::serve(
        listener,
        backend.clone(),
        Arc::new(authorize),
        stop.clone(),
    ));
    Source {
        backend,
        endpoint,
        stop,
        task,
    }
}

impl Source {
    async fn shutdown(self) {
        self.stop.cancel();
        tokio::time::timeout(Duration::from_secs(10), self.task)
            .await
            .expect("serve returns after stop")
            .expect("serve does not panic");
    }
}

fn request(snapshot: &str, parent: Option<&str>) -> SendRequest {
    SendRequest {
        dataset: "demo".to_owned(),
        id: "d-demo".to_owned(),
        snapshot: snapshot.to_owned(),
        parent: parent.map(str::to_owned),
        ticket: TICKET.to_owned(),
        compression: Compression::Zstd,
    }
}

/// Records what `progress` was told.
#[derive(Default)]
struct Progress(Mutex<Vec<u64>>);

impl Progress {
    fn seen(&self) -> Vec<u64> {
        self.0.lock().unwrap().clone()
    }
}

async fn fetch(
    endpoint: &str,
    request: &SendRequest,
    target: &Fake,
) -> Result<Fetched, TransferError> {
    transfer::fetch(endpoint, request, target, &|_| {}).await
}

/// Waits (at most 10 s) until `condition` holds.
async fn eventually(what: &str, condition: impl Fn() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while !condition() {
        assert!(Instant::now() < deadline, "timed out waiting until {what}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

fn assert_broken(result: Result<Fetched, TransferError>, expect: &str) -> String {
    match result {
        Err(error @ TransferError::Broken { .. }) => {
            let message = error.to_string();
            assert!(
                message.contains(expect),
                "message {message:?} does not contain {expect:?}"
            );
            message
        }
        other => panic!("expected Broken, got {other:?}"),
    }
}

// ---------------------------------------------------------------------------------------
// The round trip and increments
// ---------------------------------------------------------------------------------------

#[tokio::test]
async fn a_full_fetch_delivers_identical_data_and_reports_progress() {
    let data = mixed(20 << 20, 1);
    let source = source(
        Fake::new(true).with_dataset("d-demo", data.clone()),
        TicketCheck,
    )
    .await;
    let target = Fake::new(true);
    let progress = Progress::default();

    let fetched = transfer::fetch(&source.endpoint, &request("m-1", None), &target, &|bytes| {
        progress.0.lock().unwrap().push(bytes)
    })
    .await
    .expect("fetch");

    assert_eq!(target.snapshot_data("m-1").as_deref(), Some(&data[..]));
    let stream_length = framed(&data, data.len() as u64, "-").len() as u64;
    assert_eq!(fetched.raw_bytes, stream_length);
    assert_eq!(fetched.parent, None);
    assert!(
        fetched.wire_bytes < fetched.raw_bytes,
        "compressed: {} of {}",
        fetched.wire_bytes,
        fetched.raw_bytes
    );
    let seen = progress.seen();
    // Every 8 MiB (updates may coalesce when the caller is slower), and at the end.
    assert!(
        seen.len() >= 2 && seen[0] >= 8 << 20 && seen[0] < stream_length,
        "progress every 8 MiB and at the end: {seen:?}"
    );
    assert!(seen.windows(2).all(|w| w[0] <= w[1]), "{seen:?}");
    assert_eq!(seen.last(), Some(&stream_length));
    // The source made the snapshot, and sent it whole.
    assert_eq!(
        source.backend.snapshot_data("m-1").as_deref(),
        Some(&data[..])
    );
    assert_eq!(source.backend.sends(), vec![("m-1".to_owned(), None)]);

    // A retried move re-sends the same snapshot.
    let again = Fake::new(true);
    let refetched = fetch(&source.endpoint, &request("m-1", None), &again)
        .await
        .expect("retried fetch");
    assert_eq!(refetched.raw_bytes, stream_length);
    assert_eq!(again.snapshot_data("m-1").as_deref(), Some(&data[..]));
    assert_eq!(source.backend.snapshot_ids(), vec!["m-1".to_owned()]);
    source.shutdown().await;
}

#[tokio::test]
async fn a_fetch_asked_uncompressed_is_sent_as_it_is_and_checked_the_same() {
    let data = mixed(4 << 20, 3);
    let source = source(
        Fake::new(true).with_dataset("d-demo", data.clone()),
        TicketCheck,
    )
    .await;
    let target = Fake::new(true);
    let mut plain = request("m-1", None);
    plain.compression = Compression::None;
    let fetched = fetch(&source.endpoint, &plain, &target)
        .await
        .expect("fetch");
    assert_eq!(target.snapshot_data("m-1").as_deref(), Some(&data[..]));
    // As it is: what crossed the wire is the stream itself, chunk framing aside.
    assert_eq!(fetched.wire_bytes, fetched.raw_bytes);
    source.shutdown().await;
}

#[tokio::test]
async fn an_empty_dataset_moves_too() {
    let source = source(
        Fake::new(true).with_dataset("d-demo", Vec::new()),
        TicketCheck,
    )
    .await;
    let target = Fake::new(true);
    let fetched = fetch(&source.endpoint, &request("m-1", None), &target)
        .await
        .expect("fetch");
    assert_eq!(target.snapshot_data("m-1"), Some(Bytes::new()));
    assert_eq!(fetched.raw_bytes, framed(&[], 0, "-").len() as u64);
    source.shutdown().await;
}

#[tokio::test]
async fn the_parent_is_used_when_the_source_holds_it_and_sends_increments() {
    let data = mixed(1 << 20, 2);
    let source = source(
        Fake::new(true)
            .with_dataset("d-demo", data.clone())
            .with_snapshot("m-0", mixed(1 << 20, 3)),
        TicketCheck,
    )
    .await;
    let target = Fake::new(true).with_snapshot("m-0", mixed(1 << 20, 3));

    let fetched = fetch(&source.endpoint, &request("m-1", Some("m-0")), &target)
        .await
        .expect("fetch");

    assert_eq!(fetched.parent.as_deref(), Some("m-0"));
    assert_eq!(
        source.backend.sends(),
        vec![("m-1".to_owned(), Some("m-0".to_owned()))]
    );
    assert_eq!(target.snapshot_data("m-1").as_deref(), Some(&data[..]));
    source.shutdown().await;
}

#[tokio::test]
async fn the_parent_is_not_used_when_the_source_lacks_it() {
    let data = mixed(1 << 20, 4);
    let source = source(
        Fake::new(true).with_dataset("d-demo", data.clone()),
        TicketCheck,
    )
    .await;
    let target = Fake::new(true).with_snapshot("m-0", Vec::new());

    let fetched = fetch(&source.endpoint, &request("m-1", Some("m-0")), &target)
        .await
        .expect("fetch");

    assert_eq!(fetched.parent, None);
    assert_eq!(source.backend.sends(), vec![("m-1".to_owned(), None)]);
    assert_eq!(target.snapshot_data("m-1").as_deref(), Some(&data[..]));
    source.shutdown().await;
}

#[tokio::test]
async fn the_parent_is_not_used_when_the_backend_sends_no_increments() {
    let data = mixed(1 << 20, 5);
    let source = source(
        Fake::new(false)
            .with_dataset("d-demo", data.clone())
            .with_snapshot("m-0", Vec::new()),
        TicketCheck,
    )
    .await;
    let target = Fake::new(false).with_snapshot("m-0", Vec::new());

    let fetched = fetch(&source.endpoint, &request("m-1", Some("m-0")), &target)
        .await
        .expect("fetch");

    assert_eq!(fetched.parent, None);
    assert_eq!(source.backend.sends(), vec![("m-1".to_owned(), None)]);
    assert_eq!(target.snapshot_data("m-1").as_deref(), Some(&data[..]));
    source.shutdown().await;
}

// ---------------------------------------------------------------------------------------
// Refusals
// ---------------------------------------------------------------------------------------

#[tokio::test]
async fn a_refusal_comes_back_with_its_status_and_message_and_nothing_is_done() {
    let source = source(
        Fake::new(true).with_dataset("d-demo", vec![1; 1000]),
        Refuse(Refusal::conflict("dataset demo is in use on node-b")),
    )
    .await;
    let target = Fake::new(true);

    let error = fetch(&source.endpoint, &request("m-1", None), &target)
        .await
        .expect_err("refused");

    match &error {
        TransferError::Refused { status, message } => {
            assert_eq!(*status, 409);
            assert_eq!(message, "dataset demo is in use on node-b");
        }
        other => panic!("expected Refused, got {other:?}"),
    }
    assert!(
        error
            .to_string()
            .contains("dataset demo is in use on node-b"),
        "{error}"
    );
    assert!(source.backend.snapshot_ids().is_empty(), "no snapshot made");
    assert!(target.snapshot_ids().is_empty());
    source.shutdown().await;
}

#[tokio::test]
async fn a_wrong_ticket_is_forbidden() {
    let source = source(
        Fake::new(true).with_dataset("d-demo", vec![1; 10]),
        TicketCheck,
    )
    .await;
    let target = Fake::new(true);
    let mut asked = request("m-1", None);
    asked.ticket = "forged".to_owned();

    match fetch(&source.endpoint, &asked, &target).await {
        Err(TransferError::Refused { status, message }) => {
            assert_eq!(status, 403);
            assert_eq!(message, "no valid ticket to move dataset demo");
        }
        other => panic!("expected Refused, got {other:?}"),
    }
    assert!(source.backend.snapshot_ids().is_empty());
    source.shutdown().await;
}

#[tokio::test]
async fn a_dataset_missing_on_the_source_is_404() {
    let source = source(Fake::new(true), TicketCheck).await;
    let target = Fake::new(true);
    match fetch(&source.endpoint, &request("m-1", None), &target).await {
        Err(TransferError::Refused { status, message }) => {
            assert_eq!(status, 404);
            assert!(message.contains("dataset demo"), "{message}");
        }
        other => panic!("expected Refused, got {other:?}"),
    }
    source.shutdown().await;
}

/// Sends a raw request to a source; its status and JSON message.
async fn raw_request(endpoint: &str, request: Request<Full<Bytes>>) -> (StatusCode, String) {
    let address = endpoint.trim_start_matches("http://");
    let stream = tokio::net::TcpStream::connect(address).await.unwrap();
    let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .unwrap();
    tokio::spawn(connection);
    let response = sender.send_request(request).await.unwrap();
    let status = response.status();
    let body = response.into_body().collect().await.unwrap().to_bytes();
    let json: serde_json::Value = serde_json::from_slice(&body)
        .unwrap_or_else(|e| panic!("{status}: {e}: {:?}", String::from_utf8_lossy(&body)));
    (status, json["message"].as_str().unwrap().to_owned())
}

fn post(body: impl Into<Bytes>, trailers: bool) -> Request<Full<Bytes>> {
    let mut builder = Request::post(transfer::SEND_PATH).header("host", "source");
    if trailers {
        builder = builder.header("te", "trailers");
    }
    builder.body(Full::new(body.into())).unwrap()
}

#[tokio::test]
async fn bad_requests_are_answered_with_docker_style_errors() {
    let source = source(
        Fake::new(true).with_dataset("d-demo", vec![1; 10]),
        TicketCheck,
    )
    .await;
    let good = serde_json::to_vec(&request("m-1", None)).unwrap();

    let (status, message) = raw_request(&source.endpoint, post(good.clone(), false)).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert!(message.contains("TE: trailers"), "{message}");

    let (status, message) = raw_request(&source.endpoint, post("{not json", true)).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert!(message.starts_with("bad send request"), "{message}");

    let mut escaping = request("m-1", None);
    escaping.id = "../../etc".to_owned();
    let body = serde_json::to_vec(&escaping).unwrap();
    let (status, message) = raw_request(&source.endpoint, post(body, true)).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert!(message.contains("not a backend id"), "{message}");

    let (status, _) = raw_request(&source.endpoint, post(vec![b' '; 100 * 1024], true)).await;
    assert_eq!(status, StatusCode::PAYLOAD_TOO_LARGE);

    let get = Request::get(transfer::SEND_PATH)
        .header("host", "source")
        .body(Full::new(Bytes::new()))
        .unwrap();
    let (status, _) = raw_request(&source.endpoint, get).await;
    assert_eq!(status, StatusCode::METHOD_NOT_ALLOWED);

    let elsewhere = Request::post("/v1/other")
        .header("host", "source")
        .body(Full::new(Bytes::new()))
        .unwrap();
    let (status, _) = raw_request(&source.endpoint, elsewhere).await;
    assert_eq!(status, StatusCode::NOT_FOUND);

    assert!(source.backend.snapshot_ids().is_empty());
    source.shutdown().await;
}

#[test]
fn a_request_never_shows_its_ticket() {
    let shown = format!("{:?}", request("m-1", None));
    assert!(!shown.contains(TICKET), "{shown}");
    assert!(shown.contains("m-1"), "{shown}");
}

// ---------------------------------------------------------------------------------------
// Broken transfers leave nothing
// ---------------------------------------------------------------------------------------

#[tokio::test]
async fn a_send_failing_midway_is_broken_and_leaves_nothing() {
    for target in [Fake::new(true), Fake::new(true).stopping_at_its_end()] {
        let source = source(
            Fake::new(true)
                .with_dataset("d-demo", mixed(4 << 20, 6))
                .sending(SendMode::FailHalfway),
            TicketCheck,
        )
        .await;

        let result = fetch(&source.endpoint, &request("m-1", None), &target).await;

        let message = assert_broken(result, "stopped sending after");
        assert!(message.contains(&source.endpoint), "{message}");
        assert!(target.snapshot_ids().is_empty(), "nothing kept: {message}");
        assert_eq!(target.live_receives.load(Ordering::SeqCst), 0);
        source.shutdown().await;
    }
}

#[tokio::test]
async fn a_source_stopped_mid_stream_is_broken_and_its_producer_killed() {
    let source = source(
        Fake::new(true)
            .with_dataset("d-demo", vec![7; 100])
            .sending(SendMode::Stall(16 << 20)),
        TicketCheck,
    )
    .await;
    let target = Arc::new(Fake::new(true));
    let fetching = tokio::spawn({
        let target = target.clone();
        let endpoint = source.endpoint.clone();
        async move { fetch(&endpoint, &request("m-1", None), &target).await }
    });
    eventually("the target has received 8 MiB", || {
        target.received.load(Ordering::SeqCst) >= 8 << 20
    })
    .await;
    assert_eq!(source.backend.live_sends.load(Ordering::SeqCst), 1);

    let producers = source.backend.live_sends.clone();
    source.shutdown().await;

    let result = tokio::time::timeout(Duration::from_secs(10), fetching)
        .await
        .expect("fetch ends when the source goes")
        .unwrap();
    assert_broken(result, "stopped sending after");
    assert!(target.snapshot_ids().is_empty());
    eventually("the producer was dropped", || {
        producers.load(Ordering::SeqCst) == 0
    })
    .await;
}

#[tokio::test]
async fn dropping_the_fetch_mid_transfer_leaves_nothing_and_stops_the_source() {
    let source = source(
        Fake::new(true)
            .with_dataset("d-demo", vec![7; 100])
            .sending(SendMode::Stall(64 << 20)),
        TicketCheck,
    )
    .await;
    let target = Fake::new(true).with_snapshot("m-0", vec![1, 2, 3]);
    let asked = request("m-1", None);

    let mut fetching = Box::pin(fetch(&source.endpoint, &asked, &target));
    tokio::select! {
        result = &mut fetching => panic!("a stalled transfer finished: {result:?}"),
        () = eventually("the target has received 1 MiB", || {
            target.received.load(Ordering::SeqCst) >= 1 << 20
        }) => {}
    }
    assert_eq!(target.live_receives.load(Ordering::SeqCst), 1);
    drop(fetching);

    assert_eq!(
        target.live_receives.load(Ordering::SeqCst),
        0,
        "the receive was dropped"
    );
    assert_eq!(target.snapshot_ids(), vec!["m-0".to_owned()], "nothing new");
    eventually("the source dropped its producer", || {
        source.backend.live_sends.load(Ordering::SeqCst) == 0
    })
    .await;
    source.shutdown().await;
}

/// A part of a lying source's answer.
#[derive(Clone)]
enum Part {
    Data(Bytes),
    Trailers(HeaderMap),
}

/// A source that answers every request with `parts` (data and trailers), then ends the
/// body cleanly: for a stream that lies.
async fn lying_source(parts: Vec<Part>) -> (String, JoinHandle<()>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let endpoint = format!("http://{}", listener.local_addr().unwrap());
    let task = tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                return;
            };
            let parts = parts.clone();
            tokio::spawn(async move {
                let service = hyper::service::service_fn(move |_request| {
                    let frames: Vec<Result<Frame<Bytes>, Infallible>> = parts
                        .iter()
                        .map(|part| {
                            Ok(match part.clone() {
                                Part::Data(bytes) => Frame::data(bytes),
                                Part::Trailers(map) => Frame::trailers(map),
                            })
                        })
                        .collect();
                    async move {
                        let mut response =
                            Response::new(StreamBody::new(futures_util::stream::iter(frames)));
                        response.headers_mut().insert(
                            "trailer",
                            HeaderValue::from_static("powerstrip-xxh3, powerstrip-bytes"),
                        );
                        response
                            .headers_mut()
                            .insert("content-type", HeaderValue::from_static("application/zstd"));
                        Ok::<_, Infallible>(response)
                    }
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
            });
        }
    });
    (endpoint, task)
}

async fn zstd(data: &[u8]) -> Bytes {
    let mut out = Vec::new();
    async_compression::tokio::bufread::ZstdEncoder::new(data)
        .read_to_end(&mut out)
        .await
        .unwrap();
    Bytes::from(out)
}

fn trailers(checksum: &str, bytes: u64) -> Part {
    let mut map = HeaderMap::new();
    map.insert(CHECKSUM_TRAILER, HeaderValue::from_str(checksum).unwrap());
    map.insert(BYTES_TRAILER, HeaderValue::from(bytes));
    Part::Trailers(map)
}

#[tokio::test]
async fn a_stream_that_does_not_match_its_trailers_is_broken_and_leaves_nothing() {
    let data = mixed(3 << 20, 7);
    let stream = framed(&data, data.len() as u64, "-");
    let right_checksum = format!("{:032x}", xxh3_128(&stream));
    let wrong_checksum = format!("{:032x}", xxh3_128(b"something else"));
    let compressed = zstd(&stream).await;
    let length = stream.len() as u64;
    let half = compressed.slice(..compressed.len() / 2);

    let cases: Vec<(&str, Vec<Part>, &str)> = vec![
        (
            "wrong checksum",
            vec![
                Part::Data(compressed.clone()),
                trailers(&wrong_checksum, length),
            ],
            "does not match its checksum",
        ),
        (
            "wrong length",
            vec![
                Part::Data(compressed.clone()),
                trailers(&right_checksum, length + 1),
            ],
            "stream is incomplete",
        ),
        (
            "no trailers",
            vec![Part::Data(compressed.clone())],
            "without the checksum",
        ),
        (
            "half a stream, cleanly ended",
            vec![Part::Data(half.clone())],
            "stopped sending after",
        ),
        (
            "half a stream with the right trailers",
            vec![Part::Data(half), trailers(&right_checksum, length)],
            "corrupt stream",
        ),
        (
            "garbage",
            vec![
                Part::Data(Bytes::from_static(b"not zstd at all")),
                trailers(&right_checksum, length),
            ],
            "corrupt stream",
        ),
    ];
    for (case, frames, expect) in cases {
        for target in [Fake::new(true), Fake::new(true).stopping_at_its_end()] {
            let (endpoint, server) = lying_source(frames.clone()).await;
            let result = fetch(&endpoint, &request("m-1", None), &target).await;
            let message = match result {
                Err(error @ TransferError::Broken { .. }) => error.to_string(),
                other => panic!("{case}: expected Broken, got {other:?}"),
            };
            assert!(message.contains(expect), "{case}: {message}");
            assert!(
                target.snapshot_ids().is_empty(),
                "{case} (read to eof: {}): the snapshot was kept",
                target.read_to_eof
            );
            server.abort();
        }
    }

    // And the honest version of the same is accepted.
    let (endpoint, server) = lying_source(vec![
        Part::Data(compressed),
        trailers(&right_checksum, length),
    ])
    .await;
    let target = Fake::new(true).stopping_at_its_end();
    let fetched = fetch(&endpoint, &request("m-1", None), &target)
        .await
        .expect("honest stream");
    assert_eq!(fetched.raw_bytes, length);
    assert_eq!(target.snapshot_data("m-1").as_deref(), Some(&data[..]));
    server.abort();
}

#[tokio::test]
async fn an_increment_not_asked_for_is_refused() {
    let data = mixed(1 << 20, 8);
    let stream = framed(&data, data.len() as u64, "-");
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let endpoint = format!("http://{}", listener.local_addr().unwrap());
    let compressed = zstd(&stream).await;
    let server = tokio::spawn(async move {
        let (stream, _) = listener.accept().await.unwrap();
        let service = hyper::service::service_fn(move |_request| {
            let compressed = compressed.clone();
            async move {
                let mut response = Response::new(Full::new(compressed));
                response
                    .headers_mut()
                    .insert(PARENT_HEADER, HeaderValue::from_static("m-other"));
                response
                    .headers_mut()
                    .insert("content-type", HeaderValue::from_static("application/zstd"));
                Ok::<_, Infallible>(response)
            }
        });
        let _ = hyper::server::conn::http1::Builder::new()
            .serve_connection(TokioIo::new(stream), service)
            .await;
    });
    let target = Fake::new(true);
    let result = fetch(&endpoint, &request("m-1", None), &target).await;
    assert_broken(result, "not asked for");
    assert!(target.snapshot_ids().is_empty());
    server.abort();
}

// ---------------------------------------------------------------------------------------
// Unreachable sources
// ---------------------------------------------------------------------------------------

#[tokio::test]
async fn a_source_not_listening_is_unreachable_at_once() {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let endpoint = format!("http://{}", listener.local_addr().unwrap());
    drop(listener);
    let target = Fake::new(true);

    let started = Instant::now();
    let error = fetch(&endpoint, &request("m-1", None), &target)
        .await
        .expect_err("nothing listens");

    assert!(started.elapsed() < transfer::CONNECT_TIMEOUT);
    match &error {
        TransferError::Unreachable {
            endpoint: e,
            reason,
        } => {
            assert_eq!(e, &endpoint);
            assert!(reason.contains("connection refused"), "{reason}");
        }
        other => panic!("expected Unreachable, got {other:?}"),
    }
    assert!(error.to_string().contains(&endpoint), "{error}");
}

#[tokio::test]
async fn a_source_that_never_accepts_is_unreachable_after_the_connect_timeout() {
    // A listener whose accept queue is full: the kernel drops further SYNs, so a connect
    // hangs as it does to a host that went away.
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.bind("127.0.0.1:0".parse().unwrap()).unwrap();
    let listener = socket.listen(0).unwrap();
    let address = listener.local_addr().unwrap();
    let mut fillers = Vec::new();
    for _ in 0..4 {
        if let Ok(Ok(stream)) = tokio::time::timeout(
            Duration::from_millis(300),
            tokio::net::TcpStream::connect(address),
        )
        .await
        {
            fillers.push(stream);
        }
    }
    let target = Fake::new(true);

    let started = Instant::now();
    let error = fetch(&format!("http://{address}"), &request("m-1", None), &target)
        .await
        .expect_err("never accepted");

    let elapsed = started.elapsed();
    match &error {
        TransferError::Unreachable { reason, .. } => {
            assert!(reason.contains("no connection within 5s"), "{reason}");
        }
        other => panic!("expected Unreachable, got {other:?}"),
    }
    assert!(
        elapsed >= transfer::CONNECT_TIMEOUT && elapsed < transfer::CONNECT_TIMEOUT * 2,
        "{elapsed:?}"
    );
    drop(listener);
}

#[tokio::test]
async fn a_malformed_endpoint_is_unreachable() {
    let target = Fake::new(true);
    for endpoint in ["10.0.0.11:9378", "https://10.0.0.11:9378", "http://", ""] {
        match fetch(endpoint, &request("m-1", None), &target).await {
            Err(TransferError::Unreachable { reason, .. }) => {
                assert!(reason.contains("http://HOST:PORT"), "{endpoint}: {reason}");
            }
            other => panic!("{endpoint}: expected Unreachable, got {other:?}"),
        }
    }
}

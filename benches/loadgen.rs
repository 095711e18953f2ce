//! A bench helper (run by `benches/e2e.py`, not a criterion bench): a small HTTP/1.1
//! load generator over a unix socket.
//!
//! It writes raw requests and parses raw answers (status line, `Content-Length` or
//! chunked framing, `Connection: close`) on a single-threaded runtime, so that it costs as
//! little CPU as possible on the core it shares with the upstream. Every run is bounded by
//! a duration, a request count and a deadline; it prints one JSON line.
//!
//! ```text
//! loadgen small    --socket S --method GET --path /v1.41/version -c 32 --duration 5 --warmup 1
//! loadgen small    --socket S --method POST --path /v1.41/containers/create --body-file F --content-type application/json
//! loadgen upload   --socket S --path /v1.41/containers/x/archive --bytes 1073741824 [--chunked]
//! loadgen download --socket S --path '/v1.41/containers/x/archive?size=1073741824'
//! ```
//!
//! `cargo bench` runs every bench target with `--bench`: without a subcommand of its own
//! this binary says what it is and exits.

use std::io;
use std::path::PathBuf;
use std::process::ExitCode;
use std::rc::Rc;
use std::time::{Duration, Instant};

use clap::{Args, Parser, Subcommand};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::UnixStream;

/// The subcommands; anything else (e.g. cargo's `--bench`) prints a note and exits 0.
const SUBCOMMANDS: [&str; 3] = ["small", "upload", "download"];

/// How much is read at once, and the size of each uploaded chunk.
const IO_CHUNK: usize = 256 << 10;

#[derive(Debug, Parser)]
#[command(about = "HTTP/1.1 keep-alive load over a unix socket (a powerstrip bench helper)")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Small requests on N keep-alive connections for a fixed time: req/s and latency.
    Small(SmallArgs),
    /// One request with a large body (streamed from memory): MB/s.
    Upload(UploadArgs),
    /// One request whose large answer is read and dropped: MB/s.
    Download(DownloadArgs),
}

#[derive(Debug, Args)]
struct Target {
    /// The unix socket to connect to.
    #[arg(long)]
    socket: PathBuf,
    /// The request target (path and query).
    #[arg(long)]
    path: String,
    /// Gives up (exit 1) when the run is not over after this many seconds.
    #[arg(long, default_value_t = 120.0)]
    deadline: f64,
}

#[derive(Debug, Args)]
struct SmallArgs {
    #[command(flatten)]
    target: Target,
    /// The request method.
    #[arg(long, default_value = "GET")]
    method: String,
    /// A file whose content is the request body (sent with Content-Length).
    #[arg(long)]
    body_file: Option<PathBuf>,
    /// The body's Content-Type.
    #[arg(long, default_value = "application/json")]
    content_type: String,
    /// Connections, each with one request in flight.
    #[arg(long, short = 'c', default_value_t = 1)]
    concurrency: usize,
    /// Seconds measured (after the warm-up).
    #[arg(long, default_value_t = 5.0)]
    duration: f64,
    /// Seconds of load before measuring.
    #[arg(long, default_value_t = 1.0)]
    warmup: f64,
    /// Stops after this many requests in all (warm-up included).
    #[arg(long, default_value_t = 50_000_000)]
    max_requests: u64,
}

#[derive(Debug, Args)]
struct UploadArgs {
    #[command(flatten)]
    target: Target,
    /// The request method.
    #[arg(long, default_value = "PUT")]
    method: String,
    /// Body size in bytes.
    #[arg(long)]
    bytes: u64,
    /// Sends the body chunked instead of with Content-Length.
    #[arg(long)]
    chunked: bool,
    /// The body's Content-Type.
    #[arg(long, default_value = "application/x-tar")]
    content_type: String,
}

#[derive(Debug, Args)]
struct DownloadArgs {
    #[command(flatten)]
    target: Target,
}

fn main() -> ExitCode {
    let first = std::env::args().nth(1).unwrap_or_default();
    if !SUBCOMMANDS.contains(&first.as_str()) && first != "--help" && first != "-h" {
        eprintln!(
            "loadgen: a helper of benches/e2e.py (subcommands: {}); nothing to run as a bench",
            SUBCOMMANDS.join(", ")
        );
        return ExitCode::SUCCESS;
    }
    let cli = Cli::parse();
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(err) => {
            eprintln!("loadgen: cannot start the runtime: {err}");
            return ExitCode::FAILURE;
        }
    };
    let deadline = match &cli.command {
        Command::Small(a) => a.target.deadline,
        Command::Upload(a) => a.target.deadline,
        Command::Download(a) => a.target.deadline,
    };
    let run = async {
        match cli.command {
            Command::Small(args) => small(args).await,
            Command::Upload(args) => upload(args).await,
            Command::Download(args) => download(args).await,
        }
    };
    let outcome = runtime
        .block_on(async { tokio::time::timeout(Duration::from_secs_f64(deadline), run).await });
    match outcome {
        Ok(Ok(json)) => {
            println!("{json}");
            ExitCode::SUCCESS
        }
        Ok(Err(err)) => {
            eprintln!("loadgen: {err}");
            ExitCode::FAILURE
        }
        Err(_) => {
            eprintln!("loadgen: not done within the {deadline} s deadline");
            ExitCode::FAILURE
        }
    }
}

// --- small requests --------------------------------------------------------------------

/// What one connection did.
#[derive(Default)]
struct Tally {
    /// Requests answered 2xx, in all (warm-up included).
    total: u64,
    /// Latencies (ns) of the 2xx answers to requests sent after the warm-up.
    measured: Vec<u64>,
    /// Answers that were not 2xx, and failed exchanges.
    errors: u64,
    /// Connections opened.
    connects: u64,
    /// The first error seen, to show.
    first_error: Option<String>,
}

async fn small(args: SmallArgs) -> io::Result<String> {
    let body = match &args.body_file {
        Some(path) => Some(std::fs::read(path)?),
        None => None,
    };
    let mut request = format!(
        "{} {} HTTP/1.1\r\nHost: api.moby.localhost\r\nUser-Agent: powerstrip-bench\r\n",
        args.method, args.target.path
    )
    .into_bytes();
    if let Some(body) = &body {
        request.extend_from_slice(
            format!(
                "Content-Type: {}\r\nContent-Length: {}\r\n",
                args.content_type,
                body.len()
            )
            .as_bytes(),
        );
    }
    request.extend_from_slice(b"\r\n");
    if let Some(body) = &body {
        request.extend_from_slice(body);
    }
    let request: Rc<[u8]> = request.into();

    let started = Instant::now();
    let measure_from = started + Duration::from_secs_f64(args.warmup);
    let until = measure_from + Duration::from_secs_f64(args.duration);
    let per_conn = args.max_requests.div_ceil(args.concurrency.max(1) as u64);
    let local = tokio::task::LocalSet::new();
    let tallies = local
        .run_until(async {
            let tasks: Vec<_> = (0..args.concurrency.max(1))
                .map(|_| {
                    tokio::task::spawn_local(connection_loop(
                        args.target.socket.clone(),
                        request.clone(),
                        measure_from,
                        until,
                        per_conn,
                    ))
                })
                .collect();
            let mut tallies = Vec::new();
            for task in tasks {
                tallies.push(task.await.map_err(io::Error::other)?);
            }
            Ok::<_, io::Error>(tallies)
        })
        .await?;
    let finished = Instant::now();

    let mut latencies: Vec<u64> = Vec::new();
    let (mut total, mut errors, mut connects) = (0, 0, 0);
    let mut first_error = None;
    for tally in tallies {
        total += tally.total;
        errors += tally.errors;
        connects += tally.connects;
        latencies.extend(tally.measured);
        first_error = first_error.or(tally.first_error);
    }
    latencies.sort_unstable();
    // The window: from the end of the warm-up to the deadline for new requests (answers
    // to the last ones may arrive a little later; they are counted, a negligible bias).
    let window = until.min(finished).saturating_duration_since(measure_from);
    let measured = latencies.len() as u64;
    let pct = |p: f64| -> f64 {
        if latencies.is_empty() {
            return 0.0;
        }
        let rank = ((p / 100.0) * latencies.len() as f64).ceil() as usize;
        latencies[rank.clamp(1, latencies.len()) - 1] as f64 / 1e3
    };
    let mean = if latencies.is_empty() {
        0.0
    } else {
        latencies.iter().sum::<u64>() as f64 / latencies.len() as f64 / 1e3
    };
    Ok(format!(
        concat!(
            "{{\"requests\":{},\"total_requests\":{},\"errors\":{},\"connects\":{},",
            "\"seconds\":{:.3},\"rps\":{:.1},\"mean_us\":{:.1},\"p50_us\":{:.1},",
            "\"p90_us\":{:.1},\"p99_us\":{:.1},\"max_us\":{:.1},\"first_error\":{}}}"
        ),
        measured,
        total,
        errors,
        connects,
        window.as_secs_f64(),
        measured as f64 / window.as_secs_f64().max(1e-9),
        mean,
        pct(50.0),
        pct(90.0),
        pct(99.0),
        pct(100.0),
        json_string(first_error.as_deref()),
    ))
}

/// One keep-alive connection: request, answer, again, until `until` or `max` requests;
/// reconnects when the server closes.
async fn connection_loop(
    socket: PathBuf,
    request: Rc<[u8]>,
    measure_from: Instant,
    until: Instant,
    max: u64,
) -> Tally {
    let mut tally = Tally::default();
    let mut conn: Option<Conn> = None;
    let mut sent = 0u64;
    while sent < max {
        let now = Instant::now();
        if now >= until {
            break;
        }
        let c = match conn.as_mut() {
            Some(c) => c,
            None => match UnixStream::connect(&socket).await {
                Ok(stream) => {
                    tally.connects += 1;
                    conn.insert(Conn::new(stream))
                }
                Err(err) => {
                    tally.errors += 1;
                    tally
                        .first_error
                        .get_or_insert_with(|| format!("connect: {err}"));
                    tokio::time::sleep(Duration::from_millis(10)).await;
                    continue;
                }
            },
        };
        sent += 1;
        let t0 = Instant::now();
        let result = async {
            c.stream.write_all(&request).await?;
            c.read_response(true).await
        }
        .await;
        let elapsed = t0.elapsed();
        match result {
            Ok(head) => {
                if (200..300).contains(&head.status) {
                    tally.total += 1;
                    if t0 >= measure_from {
                        tally.measured.push(elapsed.as_nanos() as u64);
                    }
                } else {
                    tally.errors += 1;
                    tally
                        .first_error
                        .get_or_insert_with(|| format!("status {}", head.status));
                }
                if head.close {
                    conn = None;
                }
            }
            Err(err) => {
                tally.errors += 1;
                tally.first_error.get_or_insert_with(|| err.to_string());
                conn = None;
            }
        }
    }
    tally
}

// --- streaming -------------------------------------------------------------------------

async fn upload(args: UploadArgs) -> io::Result<String> {
    let mut conn = Conn::new(UnixStream::connect(&args.target.socket).await?);
    let framing = if args.chunked {
        "Transfer-Encoding: chunked".to_owned()
    } else {
        format!("Content-Length: {}", args.bytes)
    };
    let head = format!(
        "{} {} HTTP/1.1\r\nHost: api.moby.localhost\r\nUser-Agent: powerstrip-bench\r\nContent-Type: {}\r\n{framing}\r\n\r\n",
        args.method, args.target.path, args.content_type
    );
    let started = Instant::now();
    conn.stream.write_all(head.as_bytes()).await?;
    let data = vec![0x5au8; IO_CHUNK];
    let mut framed = format!("{IO_CHUNK:x}\r\n").into_bytes();
    framed.extend_from_slice(&data);
    framed.extend_from_slice(b"\r\n");
    let mut left = args.bytes;
    while left > 0 {
        let n = left.min(IO_CHUNK as u64) as usize;
        if !args.chunked {
            conn.stream.write_all(&data[..n]).await?;
        } else if n == IO_CHUNK {
            conn.stream.write_all(&framed).await?;
        } else {
            conn.stream
                .write_all(format!("{n:x}\r\n").as_bytes())
                .await?;
            conn.stream.write_all(&data[..n]).await?;
            conn.stream.write_all(b"\r\n").await?;
        }
        left -= n as u64;
    }
    if args.chunked {
        conn.stream.write_all(b"0\r\n\r\n").await?;
    }
    let head = conn.read_response(true).await?;
    let seconds = started.elapsed().as_secs_f64();
    if !(200..300).contains(&head.status) {
        return Err(io::Error::other(format!("upload answered {}", head.status)));
    }
    if let Some(received) = head.received
        && received != args.bytes
    {
        return Err(io::Error::other(format!(
            "the upstream received {received} bytes of {}",
            args.bytes
        )));
    }
    Ok(stream_json(args.bytes, seconds, args.chunked))
}

async fn download(args: DownloadArgs) -> io::Result<String> {
    let mut conn = Conn::new(UnixStream::connect(&args.target.socket).await?);
    let head = format!(
        "GET {} HTTP/1.1\r\nHost: api.moby.localhost\r\nUser-Agent: powerstrip-bench\r\n\r\n",
        args.target.path
    );
    let started = Instant::now();
    conn.stream.write_all(head.as_bytes()).await?;
    let head = conn.read_response(false).await?;
    if !(200..300).contains(&head.status) {
        return Err(io::Error::other(format!(
            "download answered {}",
            head.status
        )));
    }
    let bytes = conn.read_body(&head).await?;
    let seconds = started.elapsed().as_secs_f64();
    Ok(stream_json(bytes, seconds, head.chunked))
}

fn stream_json(bytes: u64, seconds: f64, chunked: bool) -> String {
    format!(
        "{{\"bytes\":{bytes},\"seconds\":{seconds:.4},\"mb_per_s\":{:.1},\"chunked\":{chunked}}}",
        bytes as f64 / 1e6 / seconds.max(1e-9)
    )
}

fn json_string(text: Option<&str>) -> String {
    match text {
        None => "null".to_owned(),
        Some(text) => {
            let escaped: String = text
                .chars()
                .map(|c| match c {
                    '"' | '\\' => format!("\\{c}"),
                    c if c.is_control() => format!("\\u{:04x}", c as u32),
                    c => c.to_string(),
                })
                .collect();
            format!("\"{escaped}\"")
        }
    }
}

// --- HTTP/1.1 reading ------------------------------------------------------------------

/// A response head: what the loop needs to know.
struct Head {
    status: u16,
    content_length: Option<u64>,
    chunked: bool,
    /// `Connection: close`, or HTTP/1.0 without keep-alive.
    close: bool,
    /// The fake upstream's `X-Bench-Received` (bytes of an upload it received).
    received: Option<u64>,
}

/// A connection with its read buffer.
struct Conn {
    stream: UnixStream,
    buf: Box<[u8]>,
    start: usize,
    end: usize,
}

impl Conn {
    fn new(stream: UnixStream) -> Self {
        Conn {
            stream,
            buf: vec![0; IO_CHUNK].into_boxed_slice(),
            start: 0,
            end: 0,
        }
    }

    /// Reads more into the buffer; EOF is an error (an answer was expected).
    async fn fill(&mut self) -> io::Result<()> {
        if self.start == self.end {
            self.start = 0;
            self.end = 0;
        } else if self.end == self.buf.len() {
            self.buf.copy_within(self.start..self.end, 0);
            self.end -= self.start;
            self.start = 0;
            if self.end == self.buf.len() {
                return Err(io::Error::other("a response line is too long"));
            }
        }
        let n = self.stream.read(&mut self.buf[self.end..]).await?;
        if n == 0 {
            return Err(io::ErrorKind::UnexpectedEof.into());
        }
        self.end += n;
        Ok(())
    }

    /// Reads a response head, then (when `body`) its body, which is dropped.
    async fn read_response(&mut self, body: bool) -> io::Result<Head> {
        let head = self.read_head().await?;
        if body {
            self.read_body(&head).await?;
        }
        Ok(head)
    }

    async fn read_head(&mut self) -> io::Result<Head> {
        let end = loop {
            if let Some(i) = find(&self.buf[self.start..self.end], b"\r\n\r\n") {
                break self.start + i;
            }
            self.fill().await?;
        };
        let text = std::str::from_utf8(&self.buf[self.start..end])
            .map_err(|_| io::Error::other("a response head that is not UTF-8"))?;
        let mut lines = text.split("\r\n");
        let status_line = lines.next().unwrap_or_default();
        let mut parts = status_line.splitn(3, ' ');
        let version = parts.next().unwrap_or_default();
        let status = parts
            .next()
            .and_then(|s| s.parse().ok())
            .ok_or_else(|| io::Error::other(format!("bad status line {status_line:?}")))?;
        let mut head = Head {
            status,
            content_length: None,
            chunked: false,
            close: version == "HTTP/1.0",
            received: None,
        };
        for line in lines {
            let Some((name, value)) = line.split_once(':') else {
                continue;
            };
            let value = value.trim();
            if name.eq_ignore_ascii_case("content-length") {
                head.content_length = value.parse().ok();
            } else if name.eq_ignore_ascii_case("transfer-encoding") {
                head.chunked = value.to_ascii_lowercase().contains("chunked");
            } else if name.eq_ignore_ascii_case("connection") {
                let value = value.to_ascii_lowercase();
                if value.contains("close") {
                    head.close = true;
                } else if value.contains("keep-alive") {
                    head.close = false;
                }
            } else if name.eq_ignore_ascii_case("x-bench-received") {
                head.received = value.parse().ok();
            }
        }
        self.start = end + 4;
        Ok(head)
    }

    /// Reads and drops the body `head` announces; returns its length.
    async fn read_body(&mut self, head: &Head) -> io::Result<u64> {
        let bodyless = head.status == 204 || head.status == 304 || head.status < 200;
        if bodyless {
            return Ok(0);
        }
        if head.chunked {
            let mut total = 0;
            loop {
                let line = self.read_line().await?;
                let size = line.split(';').next().unwrap_or_default().trim();
                let size = u64::from_str_radix(size, 16)
                    .map_err(|_| io::Error::other(format!("bad chunk size {line:?}")))?;
                if size == 0 {
                    // Trailers, up to the empty line.
                    while !self.read_line().await?.is_empty() {}
                    return Ok(total);
                }
                self.skip(size).await?;
                total += size;
                if !self.read_line().await?.is_empty() {
                    return Err(io::Error::other("a chunk not followed by CRLF"));
                }
            }
        }
        match head.content_length {
            Some(len) => {
                self.skip(len).await?;
                Ok(len)
            }
            // Delimited by the end of the connection.
            None => {
                let mut total = (self.end - self.start) as u64;
                self.start = self.end;
                loop {
                    match self.fill().await {
                        Ok(()) => {
                            total += (self.end - self.start) as u64;
                            self.start = self.end;
                        }
                        Err(err) if err.kind() == io::ErrorKind::UnexpectedEof => {
                            return Ok(total);
                        }
                        Err(err) => return Err(err),
                    }
                }
            }
        }
    }

    /// Drops the next `n` bytes.
    async fn skip(&mut self, mut n: u64) -> io::Result<()> {
        while n > 0 {
            if self.start == self.end {
                self.fill().await?;
            }
            let take = n.min((self.end - self.start) as u64);
            self.start += take as usize;
            n -= take;
        }
        Ok(())
    }

    /// The next CRLF-terminated line, without the CRLF.
    async fn read_line(&mut self) -> io::Result<String> {
        loop {
            if let Some(i) = find(&self.buf[self.start..self.end], b"\r\n") {
                let line = String::from_utf8_lossy(&self.buf[self.start..self.start + i]);
                let line = line.into_owned();
                self.start += i + 2;
                return Ok(line);
            }
            self.fill().await?;
        }
    }
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

//! The harness of tollgate's cross-adapter conformance suite: it builds and starts each demo
//! server binary and talks to it over real loopback sockets as any client would — HTTP/1.1
//! through hyper's client, WebSocket through tokio-tungstenite — so that the tests in `tests/`
//! check the wire contract every demo must keep (the limits of `examples/demo-config.toml`), and
//! nothing of how a demo is written.
//!
//! - [`run`] runs one scenario against every demo of [`DEMOS`] in every launch [`Mode`], each
//!   pairing in a demo process of its own started for it, all at once; a failure names the demo,
//!   the mode and the scenario. The process is killed when the scenario ends ([`Demo`]'s drop).
//! - [`run_with`] does the same with environment variables of the scenario's for every demo: the
//!   slow-client scenarios start them with short server timeouts ([`TIMEOUTS`]).
//! - [`Server::client`] gives a scenario clients on loopback source addresses of its own
//!   (`127.0.0.<n>`), so that per-IP limits see each scenario as its own clients.
//!
//! Adding a demo: give it a binary named like its package that serves the routes of
//! `examples/demo-config.toml` on `TOLLGATE_ADDR` with the peer address as the client address,
//! reads `TOLLGATE_CONFIG` when set and the server settings of [`SERVER_ENV`] (see
//! `examples/server_options.rs`), and prints `listening on http://ADDR` on stdout once it
//! listens; then add its package name to [`DEMOS`].

use std::collections::HashMap;
use std::convert::Infallible;
use std::fmt;
use std::future::Future;
use std::io::Read;
use std::net::{Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures_util::{SinkExt, StreamExt};
use http::header::{CONTENT_TYPE, HOST};
use http::{HeaderMap, Method, Request, StatusCode};
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Empty, Full, StreamBody};
use hyper::body::Frame;
use hyper::client::conn::http1::SendRequest;
use hyper_util::rt::TokioIo;
use serde_json::Value;
use tokio::net::{TcpSocket, TcpStream};
use tokio::task::JoinHandle;
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::{Error as WsError, Message};

/// The demo packages the suite runs against. Each has a binary of the same name; see the crate
/// docs for what a demo must do to be added here.
pub const DEMOS: &[&str] = &["axum-demo", "warp-demo", "actix-demo"];

/// The last byte of the loopback address `examples/demo-config.toml` trusts as a proxy
/// (`127.0.0.250`): reserved for the scenario that plays a proxy.
pub const TRUSTED_PROXY: u8 = 250;

/// The longest any single network wait may take (connect, a response, a WebSocket message).
pub const IO_TIMEOUT: Duration = Duration::from_secs(10);

/// The longest a whole scenario may take against one demo.
pub const SCENARIO_TIMEOUT: Duration = Duration::from_secs(60);

/// The longest a demo may take from its start to accepting connections.
pub const START_TIMEOUT: Duration = Duration::from_secs(30);

/// The longest the one `cargo build` of the demos may take.
const BUILD_TIMEOUT: Duration = Duration::from_secs(20 * 60);

/// The environment variables every demo reads for its server settings (see the README's
/// "Production deployment"): the longest a client may take to send a request head (and to keep
/// an idle connection), the longest from a request's head to its response (which covers reading
/// its body), and the most connections open at once.
pub const SERVER_ENV: [&str; 3] = ["TOLLGATE_HEADER_TIMEOUT", "TOLLGATE_REQUEST_TIMEOUT", "TOLLGATE_MAX_CONNECTIONS"];

/// The header-read timeout of [`TIMEOUTS`].
pub const HEADER_TIMEOUT: Duration = Duration::from_secs(1);

/// The request timeout of [`TIMEOUTS`].
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(2);

/// Short server timeouts ([`HEADER_TIMEOUT`], [`REQUEST_TIMEOUT`]) for the scenarios of slow
/// clients, so that they do not wait the demos' defaults out.
pub const TIMEOUTS: &[(&str, &str)] = &[("TOLLGATE_HEADER_TIMEOUT", "1s"), ("TOLLGATE_REQUEST_TIMEOUT", "2s")];

/// How a demo gets its limits.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    /// The limits built into the binary (`examples/demo-config.toml`, compiled in).
    BuiltIn,
    /// The same file read at start-up, named by `TOLLGATE_CONFIG`.
    ConfigFile,
}

impl Mode {
    /// Every mode, each a column of the matrix.
    pub const ALL: [Mode; 2] = [Mode::BuiltIn, Mode::ConfigFile];
}

impl fmt::Display for Mode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Mode::BuiltIn => "built-in limits",
            Mode::ConfigFile => "TOLLGATE_CONFIG=examples/demo-config.toml",
        })
    }
}

/// Runs `scenario` against every demo of [`DEMOS`] in every [`Mode`]: each pairing in a demo
/// process of its own, started for it and killed after it, all concurrently, each within
/// [`SCENARIO_TIMEOUT`]. Panics, naming the demo, the mode and `name`, for every pairing that
/// failed.
pub fn run<F, Fut>(name: &'static str, scenario: F)
where
    F: FnOnce(Server) -> Fut + Clone + Send + 'static,
    Fut: Future<Output = ()> + Send + 'static,
{
    run_with(name, &[], scenario);
}

/// [`run`], each demo started with the environment variables `env` (e.g. the short
/// [`TIMEOUTS`] that a slow-client scenario needs so as not to wait long).
pub fn run_with<F, Fut>(name: &'static str, env: &'static [(&'static str, &'static str)], scenario: F)
where
    F: FnOnce(Server) -> Fut + Clone + Send + 'static,
    Fut: Future<Output = ()> + Send + 'static,
{
    // Built before any clock starts (once per test process).
    for demo in DEMOS {
        binary(demo);
    }
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap_or_else(|e| panic!("cannot start a tokio runtime: {e}"));
    let failures = runtime.block_on(async {
        let mut runs = Vec::new();
        for &demo in DEMOS {
            for mode in Mode::ALL {
                let scenario = scenario.clone();
                let task = tokio::spawn(async move {
                    let process = Demo::start_with(demo, mode, env).await;
                    if tokio::time::timeout(SCENARIO_TIMEOUT, scenario(process.server())).await.is_err() {
                        panic!("did not finish within {SCENARIO_TIMEOUT:?}");
                    }
                });
                runs.push((demo, mode, task));
            }
        }
        let mut failures = Vec::new();
        for (demo, mode, task) in runs {
            if let Err(err) = task.await {
                let why = if err.is_panic() { panic_message(err.into_panic()) } else { err.to_string() };
                failures.push(format!("{demo} ({mode}), scenario `{name}`: {why}"));
            }
        }
        failures
    });
    assert!(failures.is_empty(), "{} of the runs failed:\n{}", failures.len(), failures.join("\n"));
}

fn panic_message(payload: Box<dyn std::any::Any + Send>) -> String {
    match payload.downcast::<String>() {
        Ok(s) => *s,
        Err(payload) => payload.downcast_ref::<&str>().map_or_else(|| "a panic".to_owned(), |s| (*s).to_owned()),
    }
}

fn workspace_root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap_or_else(|| panic!("tests/ has no parent folder"))
}

/// The demos' shared configuration file.
pub fn config_path() -> PathBuf {
    workspace_root().join("examples").join("demo-config.toml")
}

/// The path of `demo`'s binary, built (with every other demo) by one `cargo build` the first
/// time it is asked for in this process.
fn binary(demo: &str) -> PathBuf {
    static BUILT: OnceLock<Result<HashMap<String, PathBuf>, String>> = OnceLock::new();
    match BUILT.get_or_init(build_demos) {
        Ok(paths) => paths.get(demo).cloned().unwrap_or_else(|| panic!("`cargo build` made no binary for {demo}")),
        Err(why) => panic!("{why}"),
    }
}

/// `$CARGO build -p <demo> --bin <demo>` for every demo, with the cargo that runs the tests (the
/// `CARGO` variable it sets), in the workspace and so in the same target directory: what is
/// already built is reused. Cargo releases its build-directory lock before it runs test binaries,
/// so this does not wait on the `cargo test` that started us; the build still has a deadline.
/// The binaries are where cargo's JSON messages say it put them.
fn build_demos() -> Result<HashMap<String, PathBuf>, String> {
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let mut command = Command::new(&cargo);
    command.current_dir(workspace_root()).args(["build", "--message-format=json-render-diagnostics"]);
    for demo in DEMOS {
        command.args(["-p", demo, "--bin", demo]);
    }
    let shown = format!("{command:?}");
    let mut child = command
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| format!("cannot run {shown}: {e}"))?;
    let stdout = capture(child.stdout.take());
    let stderr = capture(child.stderr.take());
    let started = Instant::now();
    let status = loop {
        match child.try_wait() {
            Ok(Some(status)) => break status,
            Ok(None) if started.elapsed() > BUILD_TIMEOUT => {
                let _ = child.kill();
                let _ = child.wait();
                return Err(format!(
                    "{shown} did not finish within {BUILD_TIMEOUT:?} (waiting on a cargo lock?):\n{}",
                    stderr.text()
                ));
            }
            Ok(None) => std::thread::sleep(Duration::from_millis(50)),
            Err(e) => return Err(format!("{shown}: {e}")),
        }
    };
    let stdout = stdout.finish();
    if !status.success() {
        return Err(format!("{shown} failed ({status}):\n{}", stderr.finish()));
    }
    let mut paths = HashMap::new();
    for line in stdout.lines() {
        let Ok(message) = serde_json::from_str::<Value>(line) else { continue };
        let target = &message["target"];
        let is_bin = target["kind"].as_array().is_some_and(|kinds| kinds.iter().any(|k| k == "bin"));
        if message["reason"] == "compiler-artifact"
            && is_bin
            && let (Some(name), Some(executable)) = (target["name"].as_str(), message["executable"].as_str())
            && DEMOS.contains(&name)
        {
            paths.insert(name.to_owned(), PathBuf::from(executable));
        }
    }
    Ok(paths)
}

/// What a child process writes to a pipe, read by a thread so that the pipe never fills.
#[derive(Clone, Debug)]
struct Captured {
    text: Arc<Mutex<Vec<u8>>>,
    reader: Arc<Mutex<Option<std::thread::JoinHandle<()>>>>,
}

fn capture(pipe: Option<impl Read + Send + 'static>) -> Captured {
    let text = Arc::new(Mutex::new(Vec::new()));
    let reader = pipe.map(|mut pipe| {
        let text = Arc::clone(&text);
        std::thread::spawn(move || {
            let mut buf = [0u8; 8192];
            while let Ok(n @ 1..) = pipe.read(&mut buf) {
                text.lock().unwrap_or_else(|e| e.into_inner()).extend_from_slice(&buf[..n]);
            }
        })
    });
    Captured { text, reader: Arc::new(Mutex::new(reader)) }
}

impl Captured {
    /// What was read so far.
    fn text(&self) -> String {
        String::from_utf8_lossy(&self.text.lock().unwrap_or_else(|e| e.into_inner())).into_owned()
    }

    /// Everything, once the pipe is closed.
    fn finish(&self) -> String {
        if let Some(reader) = self.reader.lock().unwrap_or_else(|e| e.into_inner()).take() {
            let _ = reader.join();
        }
        self.text()
    }
}

/// A running demo process, killed when dropped.
#[derive(Debug)]
pub struct Demo {
    name: &'static str,
    mode: Mode,
    addr: SocketAddr,
    child: Child,
    stdout: Captured,
    stderr: Captured,
}

impl Demo {
    /// Starts `name`'s binary in `mode` on a free loopback port and waits (at most
    /// [`START_TIMEOUT`]) until it accepts connections. Panics, with its stderr, when it exits
    /// or never listens.
    pub async fn start(name: &'static str, mode: Mode) -> Demo {
        Demo::start_with(name, mode, &[]).await
    }

    /// [`Demo::start`] with the environment variables `env` set for the demo (the server
    /// settings of [`SERVER_ENV`] are otherwise left to the demo's defaults).
    pub async fn start_with(name: &'static str, mode: Mode, env: &[(&str, &str)]) -> Demo {
        let config = (mode == Mode::ConfigFile).then(config_path);
        Demo::spawn(name, mode, config.as_deref(), env).await
    }

    /// [`Demo::start_with`] with `TOLLGATE_CONFIG` naming `config`, a file of the scenario's own
    /// (which it may rewrite while the demo runs: see [`Demo::hang_up`]).
    pub async fn start_with_config(name: &'static str, config: &Path, env: &[(&str, &str)]) -> Demo {
        Demo::spawn(name, Mode::ConfigFile, Some(config), env).await
    }

    async fn spawn(name: &'static str, mode: Mode, config: Option<&Path>, env: &[(&str, &str)]) -> Demo {
        let binary = binary(name);
        let mut attempt = 0;
        loop {
            attempt += 1;
            let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, free_port()));
            let mut command = Command::new(&binary);
            command
                .env("TOLLGATE_ADDR", addr.to_string())
                .env_remove("TOLLGATE_CONFIG")
                .env_remove("REDIS_URL")
                .stdin(Stdio::null())
                .stdout(Stdio::piped())
                .stderr(Stdio::piped());
            // The server settings are the demo's defaults unless the scenario sets them (the
            // last word on a variable wins).
            for variable in SERVER_ENV {
                command.env_remove(variable);
            }
            command.envs(env.iter().copied());
            if let Some(config) = config {
                command.env("TOLLGATE_CONFIG", config);
            }
            let mut child =
                command.spawn().unwrap_or_else(|e| panic!("cannot start {name} ({}): {e}", binary.display()));
            let stdout = capture(child.stdout.take());
            let stderr = capture(child.stderr.take());
            let mut demo = Demo { name, mode, addr, child, stdout, stderr };
            match demo.wait_listening().await {
                Ok(()) => return demo,
                // Another process took the free port between our look and the demo's bind.
                Err(_) if attempt < 3 && demo.stderr.text().contains("in use") => {}
                Err(why) => panic!("{name} ({mode}) {why}; its stderr:\n{}", demo.stderr.finish()),
            }
        }
    }

    /// Ready when the demo says it listens on its address (the start-up line every demo prints)
    /// and a connection to it succeeds: a connection alone could reach another demo that took
    /// the same free port first, while this one failed to bind it.
    async fn wait_listening(&mut self) -> Result<(), String> {
        let started = Instant::now();
        let said = format!("listening on http://{}", self.addr);
        loop {
            if let Some(status) = self.child.try_wait().map_err(|e| e.to_string())? {
                return Err(format!("exited ({status}) before accepting connections on {}", self.addr));
            }
            if self.stdout.text().contains(&said)
                && let Ok(Ok(_)) = tokio::time::timeout(Duration::from_secs(1), TcpStream::connect(self.addr)).await
            {
                return Ok(());
            }
            if started.elapsed() > START_TIMEOUT {
                return Err(format!("did not accept connections on {} within {START_TIMEOUT:?}", self.addr));
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// The address it serves on.
    pub fn server(&self) -> Server {
        Server { addr: self.addr, demo: self.name }
    }

    /// Its package name.
    pub fn name(&self) -> &'static str {
        self.name
    }

    /// How it got its limits.
    pub fn mode(&self) -> Mode {
        self.mode
    }

    /// Sends it `SIGHUP` (with `kill`, as an operator would), which the demos take as "reload
    /// the configuration file".
    pub fn hang_up(&self) {
        let pid = self.child.id().to_string();
        let status = Command::new("kill")
            .args(["-HUP", &pid])
            .status()
            .unwrap_or_else(|e| panic!("cannot run kill -HUP {pid}: {e}"));
        assert!(status.success(), "kill -HUP {pid} failed ({status})");
    }

    /// What it wrote to stderr so far (its logs).
    pub fn stderr(&self) -> String {
        self.stderr.text()
    }
}

impl Drop for Demo {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A port no one listens on now (the kernel's pick for an ephemeral bind).
fn free_port() -> u16 {
    std::net::TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .unwrap_or_else(|e| panic!("no free loopback port: {e}"))
}

/// A demo's address.
#[derive(Clone, Copy, Debug)]
pub struct Server {
    addr: SocketAddr,
    demo: &'static str,
}

impl Server {
    /// The package name of the demo serving there (for a scenario that must name a framework's
    /// known gap; the contract is otherwise the same for every demo).
    pub fn demo(&self) -> &'static str {
        self.demo
    }

    /// The address it listens on.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// A client connecting from `127.0.0.<host>`: a client IP of its own for the demo's per-IP
    /// limits. Give each scenario its own `host` (and never [`TRUSTED_PROXY`] but to play the
    /// proxy).
    pub fn client(&self, host: u8) -> Client {
        Client { source: Ipv4Addr::new(127, 0, 0, host), server: self.addr }
    }
}

/// A request body.
pub type Body = BoxBody<Bytes, Infallible>;

/// An empty body.
pub fn empty() -> Body {
    Empty::new().boxed()
}

/// A body of `bytes`, its length known (`Content-Length`).
pub fn full(bytes: impl Into<Bytes>) -> Body {
    Full::new(bytes.into()).boxed()
}

/// A body of unknown length, sent chunked: `chunks`, then its end.
pub fn chunked(chunks: Vec<Bytes>) -> Body {
    BodyExt::boxed(StreamBody::new(futures_util::stream::iter(chunks.into_iter().map(|c| Ok(Frame::data(c))))))
}

/// A body of unknown length (sent chunked unless the request sets `Content-Length`) that sends
/// `chunks`, then never ends: the server can only answer what it has read.
pub fn unfinished(chunks: Vec<Bytes>) -> Body {
    let frames = futures_util::stream::iter(chunks.into_iter().map(|c| Ok(Frame::data(c))));
    BodyExt::boxed(StreamBody::new(frames.chain(futures_util::stream::pending())))
}

/// A client at one loopback source address.
#[derive(Clone, Copy, Debug)]
pub struct Client {
    source: Ipv4Addr,
    server: SocketAddr,
}

impl Client {
    /// Its source address.
    pub fn source(&self) -> Ipv4Addr {
        self.source
    }

    /// A TCP connection to the demo from the client's address.
    pub async fn connect(&self) -> TcpStream {
        let socket = TcpSocket::new_v4().unwrap_or_else(|e| panic!("cannot make a socket: {e}"));
        socket
            .bind(SocketAddr::from((self.source, 0)))
            .unwrap_or_else(|e| panic!("cannot bind a client socket to {}: {e}", self.source));
        let stream = tokio::time::timeout(IO_TIMEOUT, socket.connect(self.server))
            .await
            .unwrap_or_else(|_| panic!("connecting from {} to {} timed out", self.source, self.server))
            .unwrap_or_else(|e| panic!("cannot connect from {} to {}: {e}", self.source, self.server));
        stream.set_nodelay(true).unwrap_or_else(|e| panic!("cannot set TCP_NODELAY: {e}"));
        stream
    }

    /// An HTTP/1.1 connection (kept alive for several requests).
    pub async fn http(&self) -> Http {
        let stream = self.connect().await;
        let (sender, connection) =
            tokio::time::timeout(IO_TIMEOUT, hyper::client::conn::http1::handshake(TokioIo::new(stream)))
                .await
                .unwrap_or_else(|_| panic!("HTTP handshake timed out"))
                .unwrap_or_else(|e| panic!("HTTP handshake failed: {e}"));
        let connection = tokio::spawn(async move {
            let _ = connection.await;
        });
        Http { sender, connection, host: self.server.to_string() }
    }

    /// A request to the demo (with its `Host`), to finish with a body.
    pub fn request(&self, method: Method, path: &str) -> http::request::Builder {
        Request::builder().method(method).uri(path).header(HOST, self.server.to_string())
    }

    /// `GET path` on a connection of its own.
    pub async fn get(&self, path: &str) -> Reply {
        self.http().await.get(path, &[]).await
    }

    /// `POST path` with `body` (`Content-Length`) on a connection of its own.
    pub async fn post(&self, path: &str, body: impl Into<Bytes>) -> Reply {
        let request = self.request(Method::POST, path).body(full(body)).unwrap_or_else(|e| panic!("{e}"));
        self.http().await.send(request).await.unwrap_or_else(|e| panic!("POST {path}: {e}"))
    }

    /// A WebSocket handshake on `/ws`: the socket, or the response that refused it.
    pub async fn websocket(&self) -> Result<WebSocket, Box<RefusedUpgrade>> {
        let stream = self.connect().await;
        let url = format!("ws://{}/ws", self.server);
        match tokio::time::timeout(IO_TIMEOUT, tokio_tungstenite::client_async(url, stream)).await {
            Err(_) => panic!("the WebSocket handshake from {} timed out", self.source),
            Ok(Ok((socket, _))) => Ok(socket),
            Ok(Err(WsError::Http(response))) => Err(response),
            Ok(Err(e)) => panic!("the WebSocket handshake from {} failed: {e}", self.source),
        }
    }
}

/// A response that refused a WebSocket upgrade, as the WebSocket client read it.
pub type RefusedUpgrade = tokio_tungstenite::tungstenite::handshake::client::Response;

/// A WebSocket client over a TCP stream of ours.
pub type WebSocket = WebSocketStream<TcpStream>;

/// One HTTP/1.1 client connection.
#[derive(Debug)]
pub struct Http {
    sender: SendRequest<Body>,
    connection: JoinHandle<()>,
    host: String,
}

impl Http {
    /// Sends `request` and reads the whole response (each within [`IO_TIMEOUT`]); `Err` when the
    /// connection is closed or fails.
    pub async fn send(&mut self, request: Request<Body>) -> Result<Reply, hyper::Error> {
        let what = format!("{} {}", request.method(), request.uri());
        let exchange = async {
            self.sender.ready().await?;
            let response = self.sender.send_request(request).await?;
            let (parts, body) = response.into_parts();
            let body = body.collect().await?.to_bytes();
            Ok(Reply { status: parts.status, headers: parts.headers, body })
        };
        tokio::time::timeout(IO_TIMEOUT, exchange).await.unwrap_or_else(|_| panic!("{what}: no response in time"))
    }

    /// `GET path` with `headers`.
    pub async fn get(&mut self, path: &str, headers: &[(&str, &str)]) -> Reply {
        let mut request = Request::builder().uri(path).header(HOST, &self.host);
        for (name, value) in headers {
            request = request.header(*name, *value);
        }
        let request = request.body(empty()).unwrap_or_else(|e| panic!("{e}"));
        self.send(request).await.unwrap_or_else(|e| panic!("GET {path}: {e}"))
    }
}

impl Drop for Http {
    fn drop(&mut self) {
        self.connection.abort();
    }
}

/// A whole HTTP response.
#[derive(Clone)]
pub struct Reply {
    /// Its status.
    pub status: StatusCode,
    /// Its header fields.
    pub headers: HeaderMap,
    /// Its body.
    pub body: Bytes,
}

impl fmt::Debug for Reply {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {:?} {:?}", self.status, self.headers, String::from_utf8_lossy(&self.body))
    }
}

impl Reply {
    /// The header field `name`, if present and text.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }

    /// The header field `name` as a whole number; panics, showing the response, when it is
    /// missing or not a number.
    pub fn number(&self, name: &str) -> u64 {
        self.header(name)
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or_else(|| panic!("no number in the header `{name}` of {self:?}"))
    }

    /// The body as JSON; panics unless the content type is `application/json` and the body parses.
    pub fn json(&self) -> Value {
        let content_type = self.header(CONTENT_TYPE.as_str()).unwrap_or_default();
        assert!(content_type.starts_with("application/json"), "not application/json: {self:?}");
        serde_json::from_slice(&self.body).unwrap_or_else(|e| panic!("the body is not JSON ({e}): {self:?}"))
    }
}

/// What the HTTP contract says of a refusal (`429`), checked on `reply`: `Retry-After` (whole
/// seconds, at least 1), `X-RateLimit-Limit` equal to `limit`, `X-RateLimit-Remaining` below it,
/// `X-RateLimit-Reset`, and the JSON body `{"error":"rate_limited","policy":...,"retry_after":N}`
/// with `N` equal to `Retry-After`. Returns the body.
pub fn check_refusal(reply: &Reply, limit: u64) -> Value {
    assert_eq!(reply.status, StatusCode::TOO_MANY_REQUESTS, "{reply:?}");
    let retry_after = reply.number("retry-after");
    assert!(retry_after >= 1, "Retry-After is whole seconds, at least 1: {reply:?}");
    assert_eq!(reply.number("x-ratelimit-limit"), limit, "{reply:?}");
    assert!(reply.number("x-ratelimit-remaining") < limit, "{reply:?}");
    reply.number("x-ratelimit-reset");
    let body = reply.json();
    assert_eq!(body["error"], "rate_limited", "{reply:?}");
    assert!(body["policy"].as_str().is_some_and(|p| !p.is_empty()), "the body names the policy: {reply:?}");
    assert_eq!(body["retry_after"].as_u64(), Some(retry_after), "the body's retry_after is Retry-After: {reply:?}");
    body
}

/// The most a limit admitting `burst` at once and one more every `every` can have admitted
/// within `elapsed` of its first admission: the slack a scenario allows a slow machine.
pub fn admitted_at_most(burst: u64, every: Duration, elapsed: Duration) -> u64 {
    let more = elapsed.as_nanos() / every.as_nanos().max(1);
    burst + u64::try_from(more).unwrap_or(u64::MAX)
}

/// Sends `message` (within [`IO_TIMEOUT`]).
pub async fn send(socket: &mut WebSocket, message: Message) {
    tokio::time::timeout(IO_TIMEOUT, socket.send(message))
        .await
        .unwrap_or_else(|_| panic!("sending a WebSocket message timed out"))
        .unwrap_or_else(|e| panic!("sending a WebSocket message failed: {e}"));
}

/// The next text, binary or close message (pings and pongs skipped), within [`IO_TIMEOUT`];
/// panics when the socket ends or fails first.
pub async fn next_message(socket: &mut WebSocket) -> Message {
    loop {
        let next = tokio::time::timeout(IO_TIMEOUT, socket.next())
            .await
            .unwrap_or_else(|_| panic!("no WebSocket message within {IO_TIMEOUT:?}"));
        match next {
            Some(Ok(Message::Ping(_) | Message::Pong(_))) => {}
            Some(Ok(message)) => return message,
            Some(Err(e)) => panic!("the WebSocket failed: {e}"),
            None => panic!("the WebSocket ended"),
        }
    }
}

/// Sends `message` and reads the reply.
pub async fn roundtrip(socket: &mut WebSocket, message: Message) -> Message {
    send(socket, message).await;
    next_message(socket).await
}

/// The rate-limit error frame `{"error":"rate_limited","limit":...,"retry_after":N}` in
/// `message`, if it is one.
pub fn error_frame(message: &Message) -> Option<Value> {
    let Message::Text(text) = message else { return None };
    let frame: Value = serde_json::from_str(text.as_str()).ok()?;
    (frame["error"] == "rate_limited").then_some(frame)
}

/// Closes `socket` cleanly: a close frame, then reads until the server ends it (within
/// [`IO_TIMEOUT`]).
pub async fn close(mut socket: WebSocket) {
    let closing = async {
        let _ = socket.close(None).await;
        while let Some(Ok(_)) = socket.next().await {}
    };
    tokio::time::timeout(IO_TIMEOUT, closing).await.unwrap_or_else(|_| panic!("the close handshake timed out"));
}

/// Drops `socket` with a TCP reset (`SO_LINGER` 0): the client vanishes without a close frame.
pub fn reset(socket: WebSocket) {
    socket2::SockRef::from(socket.get_ref())
        .set_linger(Some(Duration::ZERO))
        .unwrap_or_else(|e| panic!("cannot set SO_LINGER: {e}"));
    drop(socket);
}

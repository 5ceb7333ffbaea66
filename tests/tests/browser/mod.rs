//! A real browser for the dashboard test: Debian's `chromium`, headless, driven over the Chrome
//! DevTools Protocol (CDP) — JSON messages on a WebSocket, spoken here with the suite's own
//! WebSocket client (tokio-tungstenite) rather than a CDP crate: the test needs five commands
//! (open a tab, navigate, evaluate, emulate, screenshot), and a CDP crate generates bindings
//! for the whole protocol, minutes of build on a small machine.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use base64::Engine as _;
use futures_util::{SinkExt, StreamExt};
use serde_json::{Value, json};
use tokio::net::TcpStream;
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::Message;

/// The longest one CDP command may take.
const COMMAND_TIMEOUT: Duration = Duration::from_secs(30);

/// The flags Chromium runs with here: headless, as root (no sandbox), no GPU, and none of its
/// own traffic to the network (which is closed: its connections would be refused, many at a
/// time), in a fresh profile.
const FLAGS: &[&str] = &[
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-dev-shm-usage",
    "--hide-scrollbars",
    "--force-color-profile=srgb",
    "--remote-debugging-port=0",
];

/// Where the browser is: `$CHROMIUM`, else `chromium` (Debian's package), `chromium-browser` or
/// `google-chrome` on the `PATH`.
pub(crate) fn find() -> Option<PathBuf> {
    if let Some(path) = std::env::var_os("CHROMIUM").map(PathBuf::from).filter(|p| p.is_file()) {
        return Some(path);
    }
    let path = std::env::var_os("PATH")?;
    ["chromium", "chromium-browser", "google-chrome"]
        .iter()
        .flat_map(|name| std::env::split_paths(&path).map(move |dir| dir.join(name)))
        .find(|candidate| candidate.is_file())
}

/// A headless Chromium, killed (and its profile removed) when dropped.
pub(crate) struct Browser {
    child: Child,
    profile: PathBuf,
    socket: WebSocketStream<TcpStream>,
    next_id: u64,
}

/// A tab, attached to the browser's connection.
pub(crate) struct Page {
    session: String,
}

impl Browser {
    /// Starts `binary` and connects to its DevTools endpoint (which it prints on stderr).
    pub(crate) async fn launch(binary: &Path) -> Result<Browser, String> {
        let profile = std::env::temp_dir().join(format!("tollgate-dashboard-{}-{}", std::process::id(), nanos()));
        let mut child = Command::new(binary)
            .args(FLAGS)
            .arg(format!("--user-data-dir={}", profile.display()))
            .arg("about:blank")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|e| format!("cannot start {}: {e}", binary.display()))?;
        // Read stderr on a thread for as long as the browser runs: a full pipe would stall it.
        let stderr = child.stderr.take().ok_or("no stderr")?;
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            let mut tx = Some(tx);
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if let Some(url) = line.strip_prefix("DevTools listening on ")
                    && let Some(tx) = tx.take()
                {
                    let _ = tx.send(url.trim().to_owned());
                }
            }
        });
        let url = rx.recv_timeout(Duration::from_secs(30)).map_err(|_| {
            let _ = child.kill();
            format!("{} printed no DevTools address within 30 s", binary.display())
        })?;
        let host = url
            .strip_prefix("ws://")
            .and_then(|rest| rest.split('/').next())
            .ok_or_else(|| format!("unexpected DevTools address {url}"))?;
        let stream = TcpStream::connect(host).await.map_err(|e| format!("connecting to {host}: {e}"))?;
        let (socket, _) =
            tokio_tungstenite::client_async(&url, stream).await.map_err(|e| format!("DevTools handshake: {e}"))?;
        Ok(Browser { child, profile, socket, next_id: 0 })
    }

    /// Sends `method` with `params` (to `page`'s session, or the browser's) and waits for its
    /// answer, skipping the events in between.
    async fn call(&mut self, page: Option<&Page>, method: &str, params: Value) -> Result<Value, String> {
        self.next_id += 1;
        let id = self.next_id;
        let mut message = json!({ "id": id, "method": method, "params": params });
        if let Some(page) = page {
            message["sessionId"] = json!(page.session);
        }
        self.socket.send(Message::text(message.to_string())).await.map_err(|e| format!("{method}: {e}"))?;
        let deadline = Instant::now() + COMMAND_TIMEOUT;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let next =
                tokio::time::timeout(left, self.socket.next()).await.map_err(|_| format!("{method}: no answer"))?;
            let text = match next {
                Some(Ok(Message::Text(text))) => text,
                Some(Ok(_)) => continue,
                Some(Err(e)) => return Err(format!("{method}: {e}")),
                None => return Err(format!("{method}: the browser closed the connection")),
            };
            let answer: Value = serde_json::from_str(&text).map_err(|e| format!("{method}: {e}"))?;
            if answer["id"] != json!(id) {
                continue;
            }
            if let Some(error) = answer.get("error") {
                return Err(format!("{method}: {error}"));
            }
            return Ok(answer["result"].clone());
        }
    }

    /// A new tab of `width` × `height` CSS pixels, in dark mode when `dark`, showing `url` once
    /// it has loaded.
    pub(crate) async fn open(&mut self, url: &str, width: u32, height: u32, dark: bool) -> Result<Page, String> {
        let target = self.call(None, "Target.createTarget", json!({ "url": "about:blank" })).await?;
        let attached = self
            .call(None, "Target.attachToTarget", json!({ "targetId": target["targetId"], "flatten": true }))
            .await?;
        let session = attached["sessionId"].as_str().ok_or("no session")?.to_owned();
        let page = Page { session };
        let metrics = json!({ "width": width, "height": height, "deviceScaleFactor": 1, "mobile": false });
        self.call(Some(&page), "Emulation.setDeviceMetricsOverride", metrics).await?;
        let scheme = if dark { "dark" } else { "light" };
        let media = json!({ "features": [{ "name": "prefers-color-scheme", "value": scheme }] });
        self.call(Some(&page), "Emulation.setEmulatedMedia", media).await?;
        self.call(Some(&page), "Page.navigate", json!({ "url": url })).await?;
        self.wait_for(&page, "document.readyState === 'complete'", Duration::from_secs(20)).await?;
        Ok(page)
    }

    /// The value of the JavaScript expression `expression` in `page`.
    pub(crate) async fn eval(&mut self, page: &Page, expression: &str) -> Result<Value, String> {
        let params = json!({ "expression": expression, "returnByValue": true, "awaitPromise": true });
        let result = self.call(Some(page), "Runtime.evaluate", params).await?;
        if let Some(exception) = result.get("exceptionDetails") {
            return Err(format!("{expression}: {exception}"));
        }
        Ok(result["result"]["value"].clone())
    }

    /// Waits until `condition` (JavaScript) is true in `page`, for at most `limit`.
    pub(crate) async fn wait_for(&mut self, page: &Page, condition: &str, limit: Duration) -> Result<(), String> {
        let deadline = Instant::now() + limit;
        loop {
            if self.eval(page, condition).await? == json!(true) {
                return Ok(());
            }
            if Instant::now() > deadline {
                return Err(format!("`{condition}` still false after {limit:?}"));
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// A PNG of what `page` shows.
    pub(crate) async fn screenshot(&mut self, page: &Page) -> Result<Vec<u8>, String> {
        let shot = self.call(Some(page), "Page.captureScreenshot", json!({ "format": "png" })).await?;
        let data = shot["data"].as_str().ok_or("no screenshot data")?;
        base64::engine::general_purpose::STANDARD.decode(data).map_err(|e| format!("screenshot: {e}"))
    }

    /// Closes `page`.
    pub(crate) async fn close(&mut self, page: Page) -> Result<(), String> {
        self.call(Some(&page), "Page.close", json!({})).await.map(drop)
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.profile);
    }
}

fn nanos() -> u128 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_nanos())
}

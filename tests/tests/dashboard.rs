//! The live dashboard of every demo in a real browser: Debian's Chromium, headless, driven over
//! the DevTools protocol. The test loads `/dashboard`, makes refusals against the demo over real
//! sockets, and waits for the page — fed by its server-sent events, drawn by its own script —
//! to show the exact number of refusals the clients saw, the client refused most as the top
//! refused key (and the next one once it is refused more), and the WebSocket connections held.
//!
//! In CI (`CI=true`) a missing browser fails the test (`scripts/test.sh` installs Debian's
//! `chromium`); elsewhere the test says it skipped.
//!
//! With `TOLLGATE_DASHBOARD_SCREENSHOT=path.png` it also loads the axum demo's dashboard in
//! light and dark mode, puts the demo under a mixed load for a while, and writes both
//! screenshots (`path.png`, `path-dark.png`): `scripts/dashboard-screenshot.sh` makes the
//! README's.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::print_stderr)]

mod browser;

use std::path::{Path, PathBuf};
use std::time::Duration;

use browser::{Browser, Page};
use tollgate_conformance::{DEMOS, Demo, Mode, Server};

/// The longest the page may take to show what happened (it is redrawn each second).
const SHOWN_WITHIN: Duration = Duration::from_secs(15);

#[test]
fn the_dashboard_shows_refusals_as_they_happen() {
    let Some(chromium) = browser::find() else {
        let ci = std::env::var("CI").is_ok_and(|v| v == "true" || v == "1");
        assert!(
            !ci,
            "no chromium on the PATH (or in $CHROMIUM): CI must run the browser test (scripts/test.sh installs it)"
        );
        eprintln!("the_dashboard_shows_refusals_as_they_happen: skipped, no chromium (apt-get install chromium)");
        return;
    };
    let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    runtime.block_on(async {
        let mut browser = Browser::launch(&chromium).await.unwrap_or_else(|e| panic!("{e}"));
        for &demo in DEMOS {
            let process = Demo::start(demo, Mode::BuiltIn).await;
            shows_refusals(&mut browser, process.server()).await;
        }
        if let Some(path) = std::env::var_os("TOLLGATE_DASHBOARD_SCREENSHOT") {
            let process = Demo::start("axum-demo", Mode::BuiltIn).await;
            screenshots(&mut browser, process.server(), Path::new(&path)).await;
        }
    });
}

/// The page's numbers and top refused key follow the refusals the clients see.
async fn shows_refusals(browser: &mut Browser, server: Server) {
    let demo = server.demo();
    let fail = |what: String| -> ! { panic!("{demo}: {what}") };
    let url = format!("http://{}/dashboard", server.addr());
    let page = browser.open(&url, 1400, 1000, false).await.unwrap_or_else(|e| fail(e));
    let live = "Number(document.documentElement.dataset.updates || 0) >= 1 && document.getElementById('status').textContent === 'live'";
    browser
        .wait_for(&page, live, SHOWN_WITHIN)
        .await
        .unwrap_or_else(|e| fail(format!("the page never got an update: {e}")));
    assert_eq!(refused_shown(browser, &page).await, 0, "{demo}: nothing refused yet");
    assert_eq!(top_key(browser, &page).await, None, "{demo}: no refused key yet");

    // One client over its limit (burst 10): the page shows exactly its refusals, and it on top.
    let first = refuse(server, 41, 25).await;
    assert!(first > 0, "{demo}: 25 requests at once never refused");
    shown(browser, &page, first, "127.0.0.41", demo).await;

    // Another refused more: the total adds up, and the top refused key changes.
    let second = refuse(server, 42, 25 + first as usize + 5).await;
    assert!(second > first, "{demo}: {second} refusals of the second client, {first} of the first");
    shown(browser, &page, first + second, "127.0.0.42", demo).await;

    // Open WebSocket connections are the active connections.
    let client = server.client(43);
    let (a, b) = (client.websocket().await.unwrap(), client.websocket().await.unwrap());
    let active = "document.getElementById('active').textContent === '2'";
    browser.wait_for(&page, active, SHOWN_WITHIN).await.unwrap_or_else(|e| fail(format!("2 sockets open: {e}")));
    drop((a, b));
    let none = "document.getElementById('active').textContent === '0'";
    browser.wait_for(&page, none, SHOWN_WITHIN).await.unwrap_or_else(|e| fail(format!("sockets closed: {e}")));

    // The adaptive limit of `GET /api/work` shows its cap beside what it holds (the route's
    // `min`, 4, while it measures its minimum latency, then its initial 20), with what it measured.
    let adaptive = "[...document.querySelectorAll('#leases tr')].some((tr) => \
        tr.cells[0].textContent === 'in_flight:/api/work' && tr.cells[1].textContent === 'in flight · adaptive gradient' \
        && /^0 \\/ (4|20)$/.test(tr.cells[3].textContent) && tr.cells[3].title.startsWith('adaptive (gradient): cap'))";
    browser.wait_for(&page, adaptive, SHOWN_WITHIN).await.unwrap_or_else(|e| fail(format!("the adaptive cap: {e}")));
    browser.close(page).await.unwrap_or_else(|e| fail(e));
}

/// Sends `requests` requests to `GET /api/hello` from `127.0.0.<host>` at once; how many were
/// refused.
async fn refuse(server: Server, host: u8, requests: usize) -> u64 {
    let mut http = server.client(host).http().await;
    let mut refused = 0;
    for _ in 0..requests {
        if http.get("/api/hello", &[]).await.status == 429 {
            refused += 1;
        }
    }
    refused
}

/// Waits until the page shows `refused` refusals in all and `top` as the top refused key.
async fn shown(browser: &mut Browser, page: &Page, refused: u64, top: &str, demo: &str) {
    let condition = format!(
        "(() => {{ const row = document.querySelector('#top-keys tbody tr[data-key]'); \
         return Number(document.getElementById('refused-total').textContent.replace(/,/g, '')) === {refused} \
         && row !== null && row.dataset.key === '{top}'; }})()"
    );
    if let Err(e) = browser.wait_for(page, &condition, SHOWN_WITHIN).await {
        let (shown, key) = (refused_shown(browser, page).await, top_key(browser, page).await);
        panic!("{demo}: expected {refused} refused with {top} on top, the page shows {shown} with {key:?} ({e})");
    }
}

async fn refused_shown(browser: &mut Browser, page: &Page) -> u64 {
    let text = browser.eval(page, "document.getElementById('refused-total').textContent").await.unwrap();
    text.as_str().unwrap_or_default().replace(',', "").parse().unwrap_or(u64::MAX)
}

async fn top_key(browser: &mut Browser, page: &Page) -> Option<String> {
    let key = "(document.querySelector('#top-keys tbody tr[data-key]') || { dataset: {} }).dataset.key || null";
    browser.eval(page, key).await.unwrap().as_str().map(str::to_owned)
}

/// The dashboard in light and dark mode after a while of mixed load: clients within their
/// limits, clients over them by different amounts, bodies posted, WebSocket connections held.
async fn screenshots(browser: &mut Browser, server: Server, path: &Path) {
    let url = format!("http://{}/dashboard", server.addr());
    let light = browser.open(&url, 1440, 960, false).await.unwrap();
    let dark = browser.open(&url, 1440, 960, true).await.unwrap();
    let client = server.client(60);
    let sockets = vec![client.websocket().await.unwrap(), client.websocket().await.unwrap()];
    let load = Duration::from_secs(40);
    // Requests per second from 127.0.0.<host>: 5/s is within the per-IP limit, the rest over it.
    let mut tasks = Vec::new();
    for (host, per_second) in [(61u8, 4u64), (62, 12), (63, 25), (64, 40), (65, 8)] {
        tasks.push(tokio::spawn(async move {
            let mut http = server.client(host).http().await;
            let mut tick = tokio::time::interval(Duration::from_millis(1000 / per_second));
            let end = tokio::time::Instant::now() + load;
            while tokio::time::Instant::now() < end {
                tick.tick().await;
                http.get("/api/hello", &[]).await;
            }
        }));
    }
    tasks.push(tokio::spawn(async move {
        let client = server.client(66);
        let end = tokio::time::Instant::now() + load;
        while tokio::time::Instant::now() < end {
            client.post("/api/echo", vec![b'x'; 2048]).await;
            tokio::time::sleep(Duration::from_millis(80)).await;
        }
    }));
    // Taken under load, a few seconds before it ends.
    tokio::time::sleep(load - Duration::from_secs(5)).await;
    for (page, file) in [(&light, path.to_path_buf()), (&dark, dark_path(path))] {
        let png = browser.screenshot(page).await.unwrap();
        std::fs::write(&file, png).unwrap_or_else(|e| panic!("cannot write {}: {e}", file.display()));
        eprintln!("wrote {}", file.display());
    }
    for task in tasks {
        task.await.unwrap();
    }
    drop(sockets);
}

/// `path` with `-dark` before its extension.
fn dark_path(path: &Path) -> PathBuf {
    let stem = path.file_stem().map(|s| s.to_string_lossy().into_owned()).unwrap_or_default();
    let ext = path.extension().map(|e| format!(".{}", e.to_string_lossy())).unwrap_or_default();
    path.with_file_name(format!("{stem}-dark{ext}"))
}

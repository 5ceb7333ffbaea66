//! The stats endpoints of every demo, over real sockets: `GET /stats` (the core's snapshot as
//! JSON, schema version 1) counts what the clients saw — refusals by policy, limit and reason,
//! the client refused most, WebSocket connections held and refused — and is itself never rate
//! limited; `GET /stats/events` streams it as server-sent events; all of them, `/dashboard`
//! too, answer 403 to a client that is not on loopback (here: one whose request came through a
//! proxy) unless it presents the token of `TOLLGATE_STATS_TOKEN`.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::Duration;

use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tollgate_conformance::{Server, run, run_with};

/// The policy of `GET /api/hello` in `examples/demo-config.toml`.
fn policy<'a>(stats: &'a Value, name: &str) -> &'a Value {
    stats["policies"].as_array().unwrap().iter().find(|p| p["name"] == name).unwrap_or_else(|| panic!("{stats}"))
}

async fn stats(server: Server, host: u8) -> Value {
    let reply = server.client(host).get("/stats").await;
    assert_eq!(reply.status, 200, "{reply:?}");
    assert_eq!(reply.header("content-type"), Some("application/json"), "{reply:?}");
    reply.json()
}

#[test]
fn stats_count_what_the_clients_saw() {
    run("GET /stats: refusals by policy, limit and reason, the top refused key, WebSocket leases", counts);
}

async fn counts(server: Server) {
    let before = stats(server, 30).await;
    assert_eq!(before["schema_version"], 1, "{before}");
    assert_eq!(before["totals"]["refused"], 0, "{before}");
    assert_eq!(before["store"]["kind"], "memory", "{before}");
    assert_eq!(before["store"]["state"], "ok", "{before}");

    let mut http = server.client(31).http().await;
    let (mut allowed, mut refused) = (0, 0);
    for _ in 0..25 {
        match http.get("/api/hello", &[]).await.status.as_u16() {
            200 => allowed += 1,
            429 => refused += 1,
            other => panic!("GET /api/hello answered {other}"),
        }
    }
    assert!(refused > 0, "25 requests at once, burst 10: some refused");

    // WebSocket connections: 3 open at once per client, the 4th refused.
    let client = server.client(32);
    let mut sockets = Vec::new();
    for _ in 0..3 {
        sockets.push(client.websocket().await.unwrap());
    }
    let refused_upgrade = client.websocket().await.unwrap_err();
    assert_eq!(refused_upgrade.status(), 429);

    let after = stats(server, 30).await;
    let hello = policy(&after, "per_ip");
    assert_eq!(hello["routes"], serde_json::json!(["/api/hello"]), "{hello}");
    // The upgrade requests count against /ws's connection rate, which is its own policy.
    assert_eq!((hello["allowed"].as_u64(), hello["refused"].as_u64()), (Some(allowed), Some(refused)), "{hello}");
    assert_eq!(hello["reasons"]["rate_limited"].as_u64(), Some(refused), "{hello}");
    let limit = &hello["limits"][0];
    assert_eq!((&limit["name"], &limit["key"], &limit["algorithm"]), (&"per_ip".into(), &"ip".into(), &"gcra".into()));
    assert_eq!(limit["refused"].as_u64(), Some(refused), "{limit}");
    assert!(limit["tracked_keys"].as_u64().unwrap() >= 1, "{limit}");

    let top = &after["top_refused"];
    let ours = top.as_array().unwrap().iter().find(|t| t["key"] == "127.0.0.31").unwrap_or_else(|| panic!("{top}"));
    assert_eq!(
        (&ours["policy"], &ours["limit"], &ours["reason"]),
        (&"per_ip".into(), &"per_ip".into(), &"rate_limited".into())
    );
    assert_eq!(ours["count"].as_u64(), Some(refused), "{ours}");

    let ws = after["leases"]
        .as_array()
        .unwrap()
        .iter()
        .find(|l| l["kind"] == "websocket")
        .unwrap_or_else(|| panic!("{after}"));
    assert_eq!((ws["in_use"].as_u64(), ws["refused"].as_u64()), (Some(3), Some(1)), "{ws}");
    let lease_top =
        top.as_array().unwrap().iter().find(|t| t["key"] == "127.0.0.32").unwrap_or_else(|| panic!("{top}"));
    assert_eq!(lease_top["reason"], "concurrency_per_key", "{lease_top}");
    drop(sockets);
}

#[test]
fn stats_are_not_rate_limited() {
    run("GET /stats: never limited, with no rate-limit headers", not_limited);
}

async fn not_limited(server: Server) {
    let mut http = server.client(33).http().await;
    for _ in 0..40 {
        let reply = http.get("/stats", &[]).await;
        assert_eq!(reply.status, 200, "{reply:?}");
        assert_eq!(reply.header("x-ratelimit-limit"), None, "{reply:?}");
    }
}

#[test]
fn stats_stream_server_sent_events() {
    run("GET /stats/events: a snapshot as soon as asked, then one a second with its rates", events);
}

async fn events(server: Server) {
    let mut stream = server.client(34).connect().await;
    let request = format!("GET /stats/events HTTP/1.1\r\nHost: {}\r\nAccept: text/event-stream\r\n\r\n", server.addr());
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut seen = String::new();
    let mut buf = [0u8; 16 * 1024];
    // Two events: the first at once, the second with the rates over the second between.
    let read = async {
        // Each event ends its JSON line with a blank line (in a chunk of its own).
        while seen.matches("}\n\n").count() < 2 {
            let n = stream.read(&mut buf).await.unwrap();
            assert!(n > 0, "the stream ended: {seen}");
            seen.push_str(&String::from_utf8_lossy(&buf[..n]));
        }
    };
    tokio::time::timeout(Duration::from_secs(10), read).await.unwrap_or_else(|_| panic!("no two events: {seen}"));
    let head = seen.split("\r\n\r\n").next().unwrap().to_ascii_lowercase();
    assert!(head.starts_with("http/1.1 200"), "{head}");
    assert!(head.contains("content-type: text/event-stream"), "{head}");
    let data: Vec<Value> = seen
        .lines()
        .filter_map(|line| line.strip_prefix("data: "))
        .map(|json| serde_json::from_str(json).unwrap())
        .collect();
    assert_eq!(data[0]["schema_version"], 1);
    assert!(data[1]["interval_ms"].as_u64().is_some_and(|ms| ms >= 500), "{}", data[1]);
    assert!(data[1]["totals"]["per_second"]["refused"].is_number(), "{}", data[1]);
}

/// What a request that came through a proxy (`X-Forwarded-For`) gets from each stats path.
async fn through_a_proxy(server: Server, host: u8, headers: &[(&str, &str)], query: &str) -> Vec<u16> {
    let mut http = server.client(host).http().await;
    let mut statuses = Vec::new();
    for path in ["/stats", "/dashboard", "/stats/events"] {
        let mut all = vec![("x-forwarded-for", "203.0.113.7")];
        all.extend_from_slice(headers);
        if path == "/stats/events" {
            // The stream never ends: its status is all there is to read, on a connection of its own.
            let mut stream = server.client(host).connect().await;
            let extra: String = all.iter().map(|(n, v)| format!("{n}: {v}\r\n")).collect();
            let request = format!("GET {path}{query} HTTP/1.1\r\nHost: {}\r\n{extra}\r\n", server.addr());
            stream.write_all(request.as_bytes()).await.unwrap();
            let mut buf = [0u8; 64];
            let n = tokio::time::timeout(Duration::from_secs(10), stream.read(&mut buf)).await.unwrap().unwrap();
            let line = String::from_utf8_lossy(&buf[..n]).into_owned();
            statuses.push(line.get(9..12).and_then(|s| s.parse().ok()).unwrap_or(0));
            continue;
        }
        let reply = http.get(&format!("{path}{query}"), &all).await;
        if reply.status == 403 {
            assert_eq!(reply.json()["error"], "forbidden", "{reply:?}");
        }
        statuses.push(reply.status.as_u16());
    }
    statuses
}

#[test]
fn stats_are_for_loopback_clients_only_by_default() {
    run("stats, dashboard and events: 403 through a proxy without a token", |server| async move {
        assert_eq!(through_a_proxy(server, 35, &[], "").await, [403, 403, 403]);
        assert_eq!(through_a_proxy(server, 35, &[], "?token=").await, [403, 403, 403], "an empty token opens nothing");
        // The loopback client itself, directly.
        assert_eq!(server.client(35).get("/dashboard").await.status, 200);
    });
}

#[test]
fn stats_token_lets_others_in() {
    const TOKEN: &[(&str, &str)] = &[("TOLLGATE_STATS_TOKEN", "s3cret-token")];
    run_with("stats with TOLLGATE_STATS_TOKEN: the bearer or the token parameter", TOKEN, |server| async move {
        let bearer = [("authorization", "Bearer s3cret-token")];
        assert_eq!(through_a_proxy(server, 36, &bearer, "").await, [200, 200, 200]);
        assert_eq!(through_a_proxy(server, 36, &[], "?token=s3cret-token").await, [200, 200, 200]);
        let wrong = [("authorization", "Bearer s3cret-tokem")];
        assert_eq!(through_a_proxy(server, 36, &wrong, "?token=guess").await, [403, 403, 403]);
    });
}

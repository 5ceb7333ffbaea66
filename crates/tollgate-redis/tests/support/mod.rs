//! Starts real `redis-server` processes on free loopback ports for the tests, and stops them.
//!
//! When `redis-server` is missing, tests print a note and return early; with `CI` set in the
//! environment they fail instead (a missing server in CI is a broken pipeline, not a skip).

#![allow(dead_code, unreachable_pub, clippy::print_stderr, clippy::unwrap_used, clippy::expect_used)]

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// Where `redis-server` and `redis-cli` are, or `None` (after the note or the CI failure).
pub fn redis_available() -> bool {
    let found = Command::new("redis-server").arg("--version").stdout(Stdio::null()).status().is_ok_and(|s| s.success());
    if !found {
        if std::env::var_os("CI").is_some() {
            panic!(
                "redis-server is not installed; CI must run these tests against a real Redis (apt-get install redis-server)"
            );
        }
        eprintln!("note: redis-server not found; skipping this Redis test (install redis-server to run it)");
    }
    found
}

static SEQ: AtomicU64 = AtomicU64::new(0);

fn temp_dir(label: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!(
        "tollgate-redis-{}-{label}-{}",
        std::process::id(),
        SEQ.fetch_add(1, Ordering::Relaxed)
    ));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// A free loopback port (and, for cluster nodes, its bus port + 10000 free too).
fn free_port(cluster: bool) -> u16 {
    for _ in 0..1000 {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = l.local_addr().unwrap().port();
        if !cluster {
            return port;
        }
        if port < 55_000 && TcpListener::bind(("127.0.0.1", port + 10_000)).is_ok() {
            return port;
        }
    }
    panic!("no free port found");
}

/// Sends one command over RESP and returns the raw reply (good enough for PING / INFO / DEBUG).
pub fn raw_command(port: u16, args: &[&str]) -> std::io::Result<String> {
    let mut s = TcpStream::connect(("127.0.0.1", port))?;
    s.set_read_timeout(Some(Duration::from_secs(5)))?;
    let mut cmd = format!("*{}\r\n", args.len());
    for a in args {
        cmd.push_str(&format!("${}\r\n{a}\r\n", a.len()));
    }
    s.write_all(cmd.as_bytes())?;
    let mut buf = vec![0u8; 64 * 1024];
    let n = s.read(&mut buf)?;
    Ok(String::from_utf8_lossy(&buf[..n]).into_owned())
}

/// One `redis-server`, killed on drop.
pub struct RedisServer {
    pub port: u16,
    dir: PathBuf,
    extra: Vec<String>,
    child: Option<Child>,
}

impl RedisServer {
    /// Starts a standalone server.
    pub fn start() -> Self {
        Self::start_with(false)
    }

    fn start_with(cluster: bool) -> Self {
        Self::start_node(cluster.then_some(5000))
    }

    /// A standalone server, or a cluster node with this node timeout (ms).
    fn start_node(cluster_node_timeout_ms: Option<u64>) -> Self {
        let cluster = cluster_node_timeout_ms.is_some();
        let extra: Vec<String> = if let Some(timeout) = cluster_node_timeout_ms {
            ["--cluster-enabled", "yes", "--cluster-config-file", "nodes.conf", "--cluster-node-timeout"]
                .map(String::from)
                .into_iter()
                .chain([timeout.to_string()])
                .collect()
        } else {
            Vec::new()
        };
        let mut last = String::new();
        for _ in 0..5 {
            let port = free_port(cluster);
            let mut s = RedisServer { port, dir: temp_dir(&port.to_string()), extra: extra.clone(), child: None };
            match s.spawn() {
                Ok(()) => return s,
                Err(e) => last = e,
            }
        }
        panic!("could not start redis-server: {last}");
    }

    fn spawn(&mut self) -> Result<(), String> {
        let child = Command::new("redis-server")
            .args(["--port", &self.port.to_string(), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"])
            .args(["--enable-debug-command", "yes", "--protected-mode", "no"])
            .arg("--dir")
            .arg(&self.dir)
            .args(&self.extra)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .map_err(|e| format!("spawn: {e}"))?;
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if let Some(status) = self.child.as_mut().and_then(|c| c.try_wait().ok().flatten()) {
                self.child = None;
                return Err(format!("redis-server on port {} exited: {status}", self.port));
            }
            if raw_command(self.port, &["PING"]).is_ok_and(|r| r.starts_with("+PONG")) {
                return Ok(());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        self.kill();
        Err(format!("redis-server on port {} did not answer PING", self.port))
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/", self.port)
    }

    /// Kills the server (SIGKILL: a crash, not a shutdown).
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Starts the server again on the same port (empty: no persistence).
    pub fn restart(&mut self) {
        self.kill();
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            match self.spawn() {
                Ok(()) => return,
                Err(e) if Instant::now() > deadline => panic!("restart: {e}"),
                Err(_) => std::thread::sleep(Duration::from_millis(50)),
            }
        }
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.kill();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// A three-master Redis Cluster, killed on drop.
pub struct RedisCluster {
    pub nodes: Vec<RedisServer>,
}

impl RedisCluster {
    pub fn start() -> Self {
        Self::start_with(3, 0, 5000)
    }

    /// Three masters, each with one replica, failing over after `node_timeout_ms` without its
    /// master: six nodes.
    pub fn start_with_replicas(node_timeout_ms: u64) -> Self {
        let cluster = Self::start_with(6, 1, node_timeout_ms);
        // Replicas in sync, so that a failover has the masters' data.
        let deadline = Instant::now() + Duration::from_secs(30);
        for n in &cluster.nodes {
            loop {
                let info = raw_command(n.port, &["INFO", "replication"]).unwrap_or_default();
                if info.contains("role:master") || info.contains("master_link_status:up") {
                    break;
                }
                assert!(Instant::now() < deadline, "replica on {} never synced: {info}", n.port);
                std::thread::sleep(Duration::from_millis(100));
            }
        }
        cluster
    }

    fn start_with(nodes: usize, replicas: u32, node_timeout_ms: u64) -> Self {
        let nodes: Vec<RedisServer> = (0..nodes).map(|_| RedisServer::start_node(Some(node_timeout_ms))).collect();
        let addrs: Vec<String> = nodes.iter().map(|n| format!("127.0.0.1:{}", n.port)).collect();
        let out = Command::new("redis-cli")
            .args(["--cluster", "create"])
            .args(&addrs)
            .args(["--cluster-replicas", &replicas.to_string(), "--cluster-yes"])
            .output()
            .expect("redis-cli must be installed with redis-server");
        assert!(
            out.status.success(),
            "redis-cli --cluster create failed: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        let deadline = Instant::now() + Duration::from_secs(30);
        for n in &nodes {
            loop {
                let info = raw_command(n.port, &["CLUSTER", "INFO"]).unwrap_or_default();
                if info.contains("cluster_state:ok") {
                    break;
                }
                assert!(Instant::now() < deadline, "cluster did not reach cluster_state:ok: {info}");
                std::thread::sleep(Duration::from_millis(100));
            }
        }
        RedisCluster { nodes }
    }

    pub fn urls(&self) -> Vec<String> {
        self.nodes.iter().map(RedisServer::url).collect()
    }

    /// The cluster as a live node sees it (`CLUSTER NODES`), or an empty list when none answers.
    pub fn topology(&self) -> Vec<ClusterNode> {
        for n in &self.nodes {
            if let Ok(reply) = raw_command(n.port, &["CLUSTER", "NODES"]) {
                let nodes: Vec<ClusterNode> = reply.lines().filter_map(ClusterNode::parse).collect();
                if !nodes.is_empty() {
                    return nodes;
                }
            }
        }
        Vec::new()
    }

    /// The hash slot of `key` (`CLUSTER KEYSLOT`).
    pub fn key_slot(&self, key: &str) -> u16 {
        let reply = raw_command(self.nodes[0].port, &["CLUSTER", "KEYSLOT", key]).unwrap();
        reply.trim().trim_start_matches(':').parse().unwrap()
    }

    /// The node of ours listening on `port`.
    pub fn node_mut(&mut self, port: u16) -> &mut RedisServer {
        self.nodes.iter_mut().find(|n| n.port == port).unwrap()
    }
}

/// One line of `CLUSTER NODES`.
#[derive(Clone, Debug)]
pub struct ClusterNode {
    pub id: String,
    pub port: u16,
    pub master: bool,
    pub failed: bool,
    /// The master it replicates (replicas only).
    pub master_id: Option<String>,
    /// Slot ranges served (masters only).
    pub slots: Vec<(u16, u16)>,
}

impl ClusterNode {
    fn parse(line: &str) -> Option<Self> {
        let fields: Vec<&str> = line.split_whitespace().collect();
        if fields.len() < 8 {
            return None;
        }
        let port = fields[1].split('@').next()?.rsplit(':').next()?.parse().ok()?;
        let flags = fields[2];
        let slots = fields[8..]
            .iter()
            .filter(|f| !f.starts_with('['))
            .filter_map(|f| match f.split_once('-') {
                Some((a, b)) => Some((a.parse().ok()?, b.parse().ok()?)),
                None => f.parse().ok().map(|s| (s, s)),
            })
            .collect();
        Some(Self {
            id: fields[0].to_owned(),
            port,
            master: flags.contains("master"),
            failed: flags.contains("fail"),
            master_id: (fields[3] != "-").then(|| fields[3].to_owned()),
            slots,
        })
    }

    pub fn serves(&self, slot: u16) -> bool {
        self.slots.iter().any(|&(a, b)| (a..=b).contains(&slot))
    }
}

//! Private Redis deployments for cluster fault tests: a Redis Cluster of primaries with
//! replicas (`redis-server --cluster-enabled yes`, joined with `redis-cli --cluster create`),
//! and a primary with a replica watched by three sentinels. Every server runs on free loopback
//! ports in a temporary directory; nodes can be killed with SIGKILL and restarted, and every
//! process is killed when the value is dropped.

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// How long a node may be unreachable before the others fail it over (ms).
pub const NODE_TIMEOUT_MS: u64 = 1000;

/// One `redis-server` process.
pub struct Node {
    /// Its client port.
    pub port: u16,
    args: Vec<String>,
    child: Option<Child>,
}

impl Node {
    fn spawn(&mut self) {
        let child = Command::new("redis-server")
            .args(&self.args)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| {
                panic!("cannot start `redis-server` (is it installed and on PATH?): {e}")
            });
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(10);
        while cli(self.port, &["PING"]).as_deref() != Some("PONG") {
            assert!(
                Instant::now() < deadline,
                "redis-server on port {} did not answer PING within 10 s",
                self.port
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            // `Child::kill` sends SIGKILL on Unix.
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        self.kill();
    }
}

/// `redis-cli -p <port> <args>`: its trimmed output, or `None` when it failed.
pub fn cli(port: u16, args: &[&str]) -> Option<String> {
    let out = Command::new("redis-cli")
        .args(["-h", "127.0.0.1", "-p", &port.to_string()])
        .args(args)
        .stdin(Stdio::null())
        .stderr(Stdio::null())
        .output()
        .ok()?;
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).trim().to_owned())
        .filter(|s| !s.starts_with("Could not connect"))
}

/// A free port whose cluster bus port (`port + 10000`) is free too.
fn cluster_port() -> u16 {
    loop {
        let port = crate::free_port();
        if port < 55_000 && std::net::TcpListener::bind(("127.0.0.1", port + 10_000)).is_ok() {
            return port;
        }
    }
}

/// A running private Redis Cluster.
pub struct RedisCluster {
    /// Its nodes, primaries first as created (roles change with failovers).
    pub nodes: Vec<Node>,
    _dir: tempfile::TempDir,
}

impl RedisCluster {
    /// Starts `primaries` primaries with `replicas` replicas each and waits until the cluster
    /// serves every slot.
    ///
    /// # Panics
    /// When a server does not start or the cluster does not form within 20 s.
    pub fn start(primaries: usize, replicas: usize) -> Self {
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("cannot create a tempdir: {e}"));
        let count = primaries * (1 + replicas);
        let mut nodes = Vec::with_capacity(count);
        for _ in 0..count {
            let port = cluster_port();
            let mut node = Node {
                port,
                args: cluster_args(port, dir.path()),
                child: None,
            };
            node.spawn();
            nodes.push(node);
        }
        let addrs: Vec<String> = nodes
            .iter()
            .map(|n| format!("127.0.0.1:{}", n.port))
            .collect();
        let created = Command::new("redis-cli")
            .args(["--cluster", "create"])
            .args(&addrs)
            .args(["--cluster-replicas", &replicas.to_string(), "--cluster-yes"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .unwrap_or_else(|e| panic!("cannot run `redis-cli --cluster create`: {e}"));
        assert!(created.success(), "redis-cli --cluster create failed");
        let cluster = RedisCluster { nodes, _dir: dir };
        let ports: Vec<u16> = cluster.nodes.iter().map(|n| n.port).collect();
        wait_until("the cluster to serve every slot", || {
            ports.iter().all(|p| {
                cli(*p, &["CLUSTER", "INFO"]).is_some_and(|i| i.contains("cluster_state:ok"))
            })
        });
        cluster
    }

    /// `redis://127.0.0.1:<port>` of every node (seeds).
    pub fn urls(&self) -> Vec<String> {
        self.nodes
            .iter()
            .map(|n| format!("redis://127.0.0.1:{}", n.port))
            .collect()
    }

    /// The port of the primary serving `key`, and the ports of its replicas, as a live node
    /// sees them now; `None` while no live primary serves it (during a failover).
    pub fn primary_of(&self, key: &str) -> Option<(u16, Vec<u16>)> {
        let live = self
            .nodes
            .iter()
            .find(|n| n.child.is_some())
            .expect("a live node");
        let slot: u16 = cli(live.port, &["CLUSTER", "KEYSLOT", key])
            .and_then(|s| s.parse().ok())
            .expect("CLUSTER KEYSLOT");
        let nodes = cli(live.port, &["CLUSTER", "NODES"]).expect("CLUSTER NODES");
        // <id> <ip:port@cport> <flags> <master id or -> <ping> <pong> <epoch> <state> <slots>...
        let mut primary = None;
        for line in nodes.lines() {
            let fields: Vec<&str> = line.split_whitespace().collect();
            if fields.len() < 8 || !fields[2].contains("master") || fields[2].contains("fail") {
                continue;
            }
            let serves = fields[8..].iter().any(|range| {
                let (a, b) = range.split_once('-').unwrap_or((range, range));
                matches!((a.parse::<u16>(), b.parse::<u16>()), (Ok(a), Ok(b)) if a <= slot && slot <= b)
            });
            if serves {
                primary = Some((fields[0].to_owned(), port_of(fields[1])));
            }
        }
        let (id, port) = primary?;
        let replicas = nodes
            .lines()
            .map(|l| l.split_whitespace().collect::<Vec<_>>())
            .filter(|f| f.len() >= 8 && f[3] == id && !f[2].contains("fail"))
            .map(|f| port_of(f[1]))
            .collect();
        Some((port, replicas))
    }

    fn node(&mut self, port: u16) -> &mut Node {
        self.nodes
            .iter_mut()
            .find(|n| n.port == port)
            .expect("a node of this cluster")
    }

    /// Kills the node on `port` with SIGKILL.
    pub fn kill(&mut self, port: u16) {
        self.node(port).kill();
    }

    /// Freezes (`SIGSTOP`) or thaws (`SIGCONT`) the node on `port`.
    pub fn signal(&mut self, port: u16, stop: bool) {
        let pid = self
            .node(port)
            .child
            .as_ref()
            .expect("a running node")
            .id()
            .to_string();
        let signal = if stop { "-STOP" } else { "-CONT" };
        let sent = Command::new("kill")
            .args([signal, &pid])
            .status()
            .unwrap_or_else(|e| panic!("cannot run `kill {signal} {pid}`: {e}"));
        assert!(sent.success(), "kill {signal} {pid} failed");
    }

    /// Starts the node on `port` again (it rejoins with its `nodes.conf`).
    pub fn restart(&mut self, port: u16) {
        let node = self.node(port);
        node.kill();
        node.spawn();
    }
}

fn port_of(address: &str) -> u16 {
    address
        .split('@')
        .next()
        .and_then(|a| a.rsplit(':').next())
        .and_then(|p| p.parse().ok())
        .expect("ip:port@cport")
}

fn cluster_args(port: u16, dir: &Path) -> Vec<String> {
    [
        "--port",
        &port.to_string(),
        "--bind",
        "127.0.0.1",
        "--cluster-enabled",
        "yes",
        "--cluster-config-file",
        &format!("nodes-{port}.conf"),
        "--cluster-node-timeout",
        &NODE_TIMEOUT_MS.to_string(),
        // Fail over whatever the replica's last contact with its primary.
        "--cluster-replica-validity-factor",
        "0",
        "--dir",
        &dir.display().to_string(),
        "--save",
        "",
        "--appendonly",
        "no",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect()
}

/// Polls `f` every 50 ms for up to 20 s.
///
/// # Panics
/// When `f` does not hold within 20 s.
pub fn wait_until(what: &str, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while !f() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// A private primary with one replica, watched by three sentinels (quorum 2) under the
/// service name `mymaster`.
pub struct RedisSentinels {
    /// The first primary (index 0) and its replica (index 1).
    pub servers: Vec<Node>,
    /// The sentinels.
    pub sentinels: Vec<Node>,
    _dir: tempfile::TempDir,
}

/// The service name the sentinels monitor.
pub const SENTINEL_SERVICE: &str = "mymaster";

impl RedisSentinels {
    /// Starts the primary, its replica and three sentinels, and waits until the sentinels
    /// know the replica.
    ///
    /// # Panics
    /// When a server does not start within 10 s or the set-up does not settle within 20 s.
    pub fn start() -> Self {
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("cannot create a tempdir: {e}"));
        let server = |port: u16, extra: &[String]| {
            let mut args: Vec<String> = [
                "--port",
                &port.to_string(),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
                "--dir",
                &dir.path().display().to_string(),
                "--dbfilename",
                &format!("dump-{port}.rdb"),
            ]
            .iter()
            .map(|s| s.to_string())
            .collect();
            args.extend_from_slice(extra);
            let mut node = Node {
                port,
                args,
                child: None,
            };
            node.spawn();
            node
        };
        let primary_port = crate::free_port();
        let primary = server(primary_port, &[]);
        let replica_port = crate::free_port();
        let replica = server(
            replica_port,
            &[
                "--replicaof".to_owned(),
                "127.0.0.1".to_owned(),
                primary_port.to_string(),
            ],
        );
        let mut sentinels = Vec::new();
        for _ in 0..3 {
            let port = crate::free_port();
            let conf = dir.path().join(format!("sentinel-{port}.conf"));
            std::fs::write(
                &conf,
                format!(
                    "port {port}\nbind 127.0.0.1\ndir {dir}\n\
                     sentinel monitor {SENTINEL_SERVICE} 127.0.0.1 {primary_port} 2\n\
                     sentinel down-after-milliseconds {SENTINEL_SERVICE} {NODE_TIMEOUT_MS}\n\
                     sentinel failover-timeout {SENTINEL_SERVICE} 5000\n\
                     sentinel parallel-syncs {SENTINEL_SERVICE} 1\n",
                    dir = dir.path().display()
                ),
            )
            .unwrap_or_else(|e| panic!("cannot write {}: {e}", conf.display()));
            let mut node = Node {
                port,
                args: vec![conf.display().to_string(), "--sentinel".to_owned()],
                child: None,
            };
            node.spawn();
            sentinels.push(node);
        }
        let set = RedisSentinels {
            servers: vec![primary, replica],
            sentinels,
            _dir: dir,
        };
        let sentinel_ports: Vec<u16> = set.sentinels.iter().map(|n| n.port).collect();
        wait_until("the sentinels to see the replica and each other", || {
            sentinel_ports.iter().all(|p| {
                cli(*p, &["SENTINEL", "MASTER", SENTINEL_SERVICE]).is_some_and(|m| {
                    let lines: Vec<&str> = m.lines().collect();
                    let value = |name: &str| {
                        lines
                            .iter()
                            .position(|l| *l == name)
                            .and_then(|i| lines.get(i + 1))
                            .copied()
                    };
                    value("num-slaves") == Some("1") && value("num-other-sentinels") == Some("2")
                })
            })
        });
        set
    }

    /// `redis://127.0.0.1:<port>` of every sentinel.
    pub fn sentinel_urls(&self) -> Vec<String> {
        self.sentinels
            .iter()
            .map(|n| format!("redis://127.0.0.1:{}", n.port))
            .collect()
    }

    /// Kills server `i` (0: the first primary, 1: its replica) with SIGKILL.
    pub fn kill_server(&mut self, i: usize) {
        self.servers[i].kill();
    }
}

//! A private 3-node NATS cluster with JetStream for cluster fault tests: every node on its own
//! free client and route ports with its own store directory, named `n1`, `n2`, `n3`; a node
//! can be killed with SIGKILL and restarted on the same ports and store.

use std::net::TcpStream;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// One node of a [`NatsCluster`].
struct Node {
    name: String,
    port: u16,
    cluster_port: u16,
    store: tempfile::TempDir,
    child: Option<Child>,
}

/// A running private JetStream cluster. Every node is killed when it is dropped.
pub struct NatsCluster {
    cluster_name: String,
    nodes: Vec<Node>,
}

impl NatsCluster {
    /// Starts `size` nodes (named `n1`…) that route to each other, and waits until each
    /// accepts clients. JetStream needs a moment more to elect its meta leader: callers retry
    /// their first stream creation (see [`NatsCluster::urls`]).
    ///
    /// # Panics
    /// When `nats-server` is not installed or a node does not come up within 10 seconds.
    pub fn start(size: usize) -> Self {
        let nodes = (1..=size)
            .map(|i| Node {
                name: format!("n{i}"),
                port: crate::free_port(),
                cluster_port: crate::free_port(),
                store: tempfile::tempdir()
                    .unwrap_or_else(|e| panic!("cannot create a tempdir: {e}")),
                child: None,
            })
            .collect();
        let mut cluster = NatsCluster {
            cluster_name: crate::unique("c"),
            nodes,
        };
        for i in 0..size {
            cluster.spawn(i);
        }
        cluster
    }

    /// The client URLs of every node, comma-separated (the seeds of a `NatsConfig`).
    pub fn urls(&self) -> String {
        self.nodes
            .iter()
            .map(|n| format!("nats://127.0.0.1:{}", n.port))
            .collect::<Vec<_>>()
            .join(",")
    }

    /// The client URL of node `i` (0-based).
    pub fn url(&self, i: usize) -> String {
        format!("nats://127.0.0.1:{}", self.nodes[i].port)
    }

    /// The cluster's name (`--cluster_name`).
    pub fn name(&self) -> &str {
        &self.cluster_name
    }

    /// The index of the node whose server name is `name`.
    pub fn index_of(&self, name: &str) -> Option<usize> {
        self.nodes.iter().position(|n| n.name == name)
    }

    /// Kills node `i` with SIGKILL and reaps it.
    pub fn kill(&mut self, i: usize) {
        if let Some(mut child) = self.nodes[i].child.take() {
            // `Child::kill` sends SIGKILL on Unix.
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts node `i` again on its ports and store directory.
    ///
    /// # Panics
    /// As [`start`](Self::start).
    pub fn restart(&mut self, i: usize) {
        self.kill(i);
        self.spawn(i);
    }

    fn spawn(&mut self, i: usize) {
        let routes = self
            .nodes
            .iter()
            .enumerate()
            .filter(|(j, _)| *j != i)
            .map(|(_, n)| format!("nats://127.0.0.1:{}", n.cluster_port))
            .collect::<Vec<_>>()
            .join(",");
        let node = &self.nodes[i];
        let child = Command::new("nats-server")
            .args(["-a", "127.0.0.1", "-p", &node.port.to_string(), "-js"])
            .args(["--server_name", &node.name])
            .args(["--cluster_name", &self.cluster_name])
            .args([
                "--cluster",
                &format!("nats://127.0.0.1:{}", node.cluster_port),
            ])
            .args(["--routes", &routes])
            .arg("-sd")
            .arg(node.store.path())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| {
                panic!("cannot start `nats-server` (is it installed and on PATH?): {e}")
            });
        self.nodes[i].child = Some(child);
        self.wait_ready(i);
    }

    /// Waits until node `i` accepts a connection and greets with INFO.
    fn wait_ready(&mut self, i: usize) {
        let node = &mut self.nodes[i];
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if let Some(child) = node.child.as_mut()
                && let Ok(Some(status)) = child.try_wait()
            {
                panic!(
                    "nats-server {} on port {} exited during start-up ({status}); port taken?",
                    node.name, node.port
                );
            }
            if let Ok(stream) = TcpStream::connect(("127.0.0.1", node.port)) {
                use std::io::Read;
                let _ = stream.set_read_timeout(Some(Duration::from_secs(2)));
                let mut buf = [0u8; 4];
                if (&stream).read_exact(&mut buf).is_ok() && &buf == b"INFO" {
                    return;
                }
            }
            assert!(
                Instant::now() < deadline,
                "nats-server {} on port {} did not accept connections within 10s",
                node.name,
                node.port
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for NatsCluster {
    fn drop(&mut self) {
        for i in 0..self.nodes.len() {
            self.kill(i);
        }
    }
}

//! A private `nats-server` with JetStream for fault tests: its own free port and store
//! directory, killed with SIGKILL and restarted on the same port and store.

use std::net::TcpStream;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// A running (or killed) private `nats-server -js`. Killed when dropped.
pub struct NatsServer {
    port: u16,
    store: tempfile::TempDir,
    child: Option<Child>,
    extra_args: Vec<String>,
}

impl NatsServer {
    /// Starts a server on a free port with a fresh store directory and waits until it accepts
    /// connections.
    ///
    /// # Panics
    /// When `nats-server` is not installed or does not come up within 10 seconds.
    pub fn start() -> Self {
        Self::start_with(&[])
    }

    /// As [`start`](Self::start), with extra `nats-server` arguments (e.g. `--user u --pass p`).
    ///
    /// # Panics
    /// As [`start`](Self::start).
    pub fn start_with(extra_args: &[&str]) -> Self {
        let store = tempfile::tempdir().unwrap_or_else(|e| panic!("cannot create a tempdir: {e}"));
        let mut server = NatsServer {
            port: crate::free_port(),
            store,
            child: None,
            extra_args: extra_args.iter().map(|a| a.to_string()).collect(),
        };
        server.spawn();
        server
    }

    /// A free port and a fresh store directory, with no server running yet (a link that is down
    /// from the start); [`restart`](Self::restart) starts it.
    pub fn not_started() -> Self {
        let store = tempfile::tempdir().unwrap_or_else(|e| panic!("cannot create a tempdir: {e}"));
        NatsServer {
            port: crate::free_port(),
            store,
            child: None,
            extra_args: Vec::new(),
        }
    }

    /// `nats://127.0.0.1:<port>`.
    pub fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port)
    }

    /// The port it listens on.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// The JetStream store directory (kept across restarts).
    pub fn store_dir(&self) -> &Path {
        self.store.path()
    }

    /// Kills the server with SIGKILL (no graceful shutdown, no flush) and reaps it.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            // `Child::kill` sends SIGKILL on Unix.
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts the server again on the same port and store directory.
    ///
    /// # Panics
    /// As [`start`](Self::start).
    pub fn restart(&mut self) {
        self.kill();
        self.spawn();
    }

    fn spawn(&mut self) {
        let child = Command::new("nats-server")
            .args([
                "-a",
                "127.0.0.1",
                "-p",
                &self.port.to_string(),
                "-js",
                "-sd",
            ])
            .arg(self.store.path())
            .args(&self.extra_args)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| {
                panic!("cannot start `nats-server` (is it installed and on PATH?): {e}")
            });
        self.child = Some(child);
        self.wait_ready();
    }

    /// Waits until the port accepts a connection and the server greets with INFO.
    fn wait_ready(&mut self) {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if let Some(child) = self.child.as_mut()
                && let Ok(Some(status)) = child.try_wait()
            {
                panic!(
                    "nats-server on port {} exited during start-up ({status}); port taken?",
                    self.port
                );
            }
            if let Ok(stream) = TcpStream::connect(("127.0.0.1", self.port)) {
                use std::io::Read;
                let _ = stream.set_read_timeout(Some(Duration::from_secs(2)));
                let mut buf = [0u8; 4];
                if (&stream).read_exact(&mut buf).is_ok() && &buf == b"INFO" {
                    return;
                }
            }
            if Instant::now() > deadline {
                panic!(
                    "nats-server on port {} did not accept connections within 10s",
                    self.port
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for NatsServer {
    fn drop(&mut self) {
        self.kill();
    }
}

//! A private `redis-server` on a free port, for fault tests that kill and restart it.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// A `redis-server` child process (no persistence) on its own port. Killed on drop.
#[derive(Debug)]
pub struct RedisServer {
    port: u16,
    child: Option<Child>,
    tls: Option<Tls>,
}

/// The TLS side of a server started with [`RedisServer::start_tls`].
#[derive(Debug)]
struct Tls {
    port: u16,
    certs: crate::tls::TestCertificates,
}

impl RedisServer {
    /// Starts a server on a free port and waits (up to 10 s) until it answers `PING`.
    ///
    /// # Panics
    /// When `redis-server` cannot be started or does not answer.
    pub fn start() -> Self {
        let mut server = RedisServer {
            port: crate::free_port(),
            child: None,
            tls: None,
        };
        server.spawn();
        server
    }

    /// Starts a server that also listens for TLS on a second port, with a certificate for
    /// `127.0.0.1` signed by a throw-away CA (made with the `openssl` command).
    ///
    /// # Panics
    /// When `openssl` or `redis-server` fails.
    pub fn start_tls() -> Self {
        let certs = crate::tls::TestCertificates::new();
        let mut server = RedisServer {
            port: crate::free_port(),
            child: None,
            tls: Some(Tls {
                port: crate::free_port(),
                certs,
            }),
        };
        server.spawn();
        server
    }

    /// The TLS URL (`rediss://127.0.0.1:<tls port>`), for a server from
    /// [`start_tls`](Self::start_tls).
    ///
    /// # Panics
    /// When the server has no TLS port.
    pub fn tls_url(&self) -> String {
        let tls = self.tls.as_ref().expect("server started without TLS");
        format!("rediss://127.0.0.1:{}", tls.port)
    }

    /// The PEM file of the CA that signed the TLS certificate.
    ///
    /// # Panics
    /// When the server has no TLS port.
    pub fn ca_cert(&self) -> std::path::PathBuf {
        let tls = self.tls.as_ref().expect("server started without TLS");
        tls.certs.ca_cert()
    }

    /// The server's URL.
    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    /// The server's port.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// Kills the server with SIGKILL (no clean shutdown) and waits for it to exit.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts the server again on the same port (after [`kill`](Self::kill)); it comes back
    /// empty.
    pub fn restart(&mut self) {
        self.kill();
        self.spawn();
    }

    fn spawn(&mut self) {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let mut command = Command::new("redis-server");
            command
                .args(["--port", &self.port.to_string()])
                .args(["--bind", "127.0.0.1"])
                .args(["--save", "", "--appendonly", "no"]);
            if let Some(tls) = &self.tls {
                let file = |name: &str| tls.certs.dir().join(name).display().to_string();
                command
                    .args(["--tls-port", &tls.port.to_string()])
                    .args(["--tls-cert-file", &file("server.crt")])
                    .args(["--tls-key-file", &file("server.key")])
                    .args(["--tls-ca-cert-file", &file("ca.crt")])
                    .args(["--tls-auth-clients", "no"]);
            }
            let child = command
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .unwrap_or_else(|e| {
                    panic!("cannot start `redis-server` (is it installed and on PATH?): {e}")
                });
            self.child = Some(child);
            if self.wait_ready(deadline) {
                return;
            }
            // The port may still be held by the killed process for a moment: try again.
            self.kill();
            assert!(
                Instant::now() < deadline,
                "private redis-server on port {} did not answer PING within 10 s",
                self.port
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// True once the server answers `PING`; false if the process exits or the deadline passes.
    fn wait_ready(&mut self, deadline: Instant) -> bool {
        while Instant::now() < deadline {
            if let Some(child) = self.child.as_mut()
                && let Ok(Some(_)) = child.try_wait()
            {
                return false;
            }
            if self.answers_ping() {
                return true;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        false
    }

    fn answers_ping(&self) -> bool {
        let Ok(mut stream) = TcpStream::connect(("127.0.0.1", self.port)) else {
            return false;
        };
        let _ = stream.set_read_timeout(Some(Duration::from_millis(500)));
        if stream.write_all(b"PING\r\n").is_err() {
            return false;
        }
        let mut buf = [0u8; 7];
        stream.read_exact(&mut buf).is_ok() && &buf == b"+PONG\r\n"
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.kill();
    }
}

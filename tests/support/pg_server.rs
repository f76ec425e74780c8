//! A private PostgreSQL cluster (`initdb` + `postgres` on a free port in a temporary directory)
//! with `ssl=on`, a certificate authority and server certificate made by the test, and a
//! `pg_hba.conf` that accepts TLS connections only: for the TLS tests, and for restoring a dump
//! into a cluster with a fresh transaction-id counter.
//!
//! One server per test binary ([`PgServer::shared`]), started on first use. It is killed when
//! the test process exits, however it exits: the server process is started with a parent-death
//! signal (`setpriv --pdeathsig KILL`) from a thread that lives as long as the process. Its
//! directory is removed by the next run (directories whose owning test process is gone).

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

/// The user that `pg_hba.conf` authenticates by client certificate (`hostssl ... cert`).
pub const CERT_USER: &str = "certuser";

/// A private PostgreSQL server; see the module docs.
#[derive(Debug)]
pub struct PgServer {
    port: u16,
    dir: PathBuf,
    certs: crate::tls::TestCertificates,
    client_cert: PathBuf,
    client_key: PathBuf,
}

const PREFIX: &str = "eventflow-pg-";

impl PgServer {
    /// The server of this test binary, started (up to 60 s) on first use.
    ///
    /// # Panics
    /// When `initdb`, `postgres` or `openssl` cannot be run or the server does not come up.
    pub fn shared() -> &'static PgServer {
        static SERVER: OnceLock<PgServer> = OnceLock::new();
        SERVER.get_or_init(PgServer::start)
    }

    fn start() -> PgServer {
        remove_stale_dirs();
        let dir = std::env::temp_dir().join(format!("{PREFIX}{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap_or_else(|e| panic!("cannot create {dir:?}: {e}"));
        give_to_postgres(&dir);
        let certs = crate::tls::TestCertificates::new();
        let (client_cert, client_key) = certs.client_certificate(CERT_USER);
        let data = dir.join("data");
        run_as_postgres(Command::new(bin("initdb")).arg("-D").arg(&data).args([
            "-U",
            "postgres",
            "--auth=trust",
            "-E",
            "UTF8",
            "--no-sync",
        ]));
        for (from, to) in [
            (certs.server_cert(), "server.crt"),
            (certs.server_key(), "server.key"),
            (certs.ca_cert(), "ca.crt"),
        ] {
            let to = data.join(to);
            std::fs::copy(&from, &to).unwrap_or_else(|e| panic!("cannot copy {from:?}: {e}"));
            set_mode(&to, 0o600);
            give_to_postgres(&to);
        }
        let port = crate::free_port();
        append(
            &data.join("postgresql.conf"),
            &format!(
                "port = {port}\nlisten_addresses = '127.0.0.1,127.0.0.2'\n\
                 unix_socket_directories = '{}'\nssl = on\nssl_cert_file = 'server.crt'\n\
                 ssl_key_file = 'server.key'\nssl_ca_file = 'ca.crt'\nfsync = off\n\
                 synchronous_commit = off\nfull_page_writes = off\nmax_connections = 60\n\
                 shared_buffers = 16MB\nmax_prepared_transactions = 4\n",
                dir.display()
            ),
        );
        // TLS only: no `host`/`hostnossl` line, so a clear-text connection is refused.
        std::fs::write(
            data.join("pg_hba.conf"),
            format!(
                "local all all trust\n\
                 hostssl all {CERT_USER} 127.0.0.0/8 cert\n\
                 hostssl all all 127.0.0.0/8 trust\n"
            ),
        )
        .unwrap_or_else(|e| panic!("cannot write pg_hba.conf: {e}"));
        spawn_server(&data, &dir);
        let server = PgServer {
            port,
            dir,
            certs,
            client_cert,
            client_key,
        };
        server.wait_ready();
        server.psql(&format!("CREATE ROLE {CERT_USER} LOGIN"));
        server
    }

    /// `postgres://<user>@127.0.0.1:<port>/<database>` (no `sslmode`: set it in the test).
    pub fn url(&self, user: &str, database: &str) -> String {
        format!("postgres://{user}@127.0.0.1:{}/{database}", self.port)
    }

    /// The server's port.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// The PEM file of the CA that signed the server (and client) certificates.
    pub fn ca_cert(&self) -> PathBuf {
        self.certs.ca_cert()
    }

    /// The client certificate and key for [`CERT_USER`].
    pub fn client_cert(&self) -> (PathBuf, PathBuf) {
        (self.client_cert.clone(), self.client_key.clone())
    }

    /// Runs `sql` as the superuser over the server's Unix socket (`psql`, stop on error).
    ///
    /// # Panics
    /// When `psql` fails.
    pub fn psql(&self, sql: &str) -> String {
        self.psql_in("postgres", sql)
    }

    /// [`psql`](Self::psql) in `database`.
    pub fn psql_in(&self, database: &str, sql: &str) -> String {
        let out = Command::new(bin("psql"))
            .args([
                "-X",
                "-q",
                "-A",
                "-t",
                "-v",
                "ON_ERROR_STOP=1",
                "-U",
                "postgres",
            ])
            .arg("-h")
            .arg(&self.dir)
            .arg("-p")
            .arg(self.port.to_string())
            .arg("-d")
            .arg(database)
            .arg("-c")
            .arg(sql)
            .output()
            .unwrap_or_else(|e| panic!("cannot run psql: {e}"));
        assert!(
            out.status.success(),
            "psql {sql:?} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).trim().to_owned()
    }

    /// The Unix-socket directory (for `pg_restore -h`).
    pub fn socket_dir(&self) -> &Path {
        &self.dir
    }

    fn wait_ready(&self) {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let ok = Command::new(bin("pg_isready"))
                .arg("-h")
                .arg(&self.dir)
                .arg("-p")
                .arg(self.port.to_string())
                .stdout(Stdio::null())
                .status()
                .is_ok_and(|s| s.success());
            if ok {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "private PostgreSQL on port {} did not start; see {:?}",
                self.port,
                self.dir.join("server.log")
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

/// A PostgreSQL program (`initdb`, `pg_dump`, ...) from `pg_config --bindir`.
pub fn bin(name: &str) -> PathBuf {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        let out = Command::new("pg_config")
            .arg("--bindir")
            .output()
            .unwrap_or_else(|e| panic!("cannot run pg_config (PostgreSQL installed?): {e}"));
        PathBuf::from(String::from_utf8_lossy(&out.stdout).trim())
    })
    .join(name)
}

/// Whether this process runs as root: PostgreSQL refuses to, so its programs then run as the
/// `postgres` user.
fn is_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
}

/// `command`, as the `postgres` user when we are root.
fn as_postgres(command: &Command) -> Command {
    if !is_root() {
        let mut same = Command::new(command.get_program());
        same.args(command.get_args());
        return same;
    }
    let mut wrapped = Command::new("setpriv");
    wrapped
        .args([
            "--reuid=postgres",
            "--regid=postgres",
            "--init-groups",
            "--pdeathsig=KILL",
        ])
        .arg(command.get_program())
        .args(command.get_args());
    wrapped
}

fn run_as_postgres(command: &mut Command) {
    let out = as_postgres(command)
        .output()
        .unwrap_or_else(|e| panic!("cannot run {command:?}: {e}"));
    assert!(
        out.status.success(),
        "{command:?} failed: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Starts `postgres -D data` from a thread that waits for it for the rest of the process: the
/// parent-death signal is tied to that thread, so the server dies with the test process.
fn spawn_server(data: &Path, dir: &Path) {
    let log = std::fs::File::create(dir.join("server.log"))
        .unwrap_or_else(|e| panic!("cannot create server.log: {e}"));
    give_to_postgres(&dir.join("server.log"));
    let mut command = Command::new(bin("postgres"));
    command.arg("-D").arg(data);
    let mut command = as_postgres(&command);
    command
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(log);
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || match command.spawn() {
        Ok(mut child) => {
            let _ = tx.send(Ok(()));
            let _ = child.wait();
        }
        Err(e) => {
            let _ = tx.send(Err(e));
        }
    });
    rx.recv()
        .unwrap_or_else(|e| panic!("server thread gone: {e}"))
        .unwrap_or_else(|e| panic!("cannot start postgres: {e}"));
}

/// Removes the directories of earlier runs whose test process is gone.
fn remove_stale_dirs() {
    let Ok(entries) = std::fs::read_dir(std::env::temp_dir()) else {
        return;
    };
    for entry in entries.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        if let Some(pid) = name.strip_prefix(PREFIX)
            && !Path::new("/proc").join(pid).exists()
        {
            let _ = std::fs::remove_dir_all(entry.path());
        }
    }
}

fn append(path: &Path, text: &str) {
    use std::io::Write;
    let mut file = std::fs::OpenOptions::new()
        .append(true)
        .open(path)
        .unwrap_or_else(|e| panic!("cannot open {path:?}: {e}"));
    file.write_all(text.as_bytes())
        .unwrap_or_else(|e| panic!("cannot write {path:?}: {e}"));
}

fn set_mode(path: &Path, mode: u32) {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))
        .unwrap_or_else(|e| panic!("cannot chmod {path:?}: {e}"));
}

/// Makes `path` the `postgres` user's when we are root.
fn give_to_postgres(path: &Path) {
    if is_root() {
        let status = Command::new("chown")
            .arg("postgres:postgres")
            .arg(path)
            .status()
            .unwrap_or_else(|e| panic!("cannot run chown: {e}"));
        assert!(status.success(), "chown {path:?} failed");
    }
}

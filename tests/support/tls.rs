//! Throw-away TLS material for private servers: a CA and a server certificate for `127.0.0.1`
//! and `localhost`, made with the `openssl` command in a temporary directory.

use std::path::{Path, PathBuf};
use std::process::Command;

/// `ca.crt`, `server.crt` and `server.key` in a temporary directory (removed on drop).
#[derive(Debug)]
pub struct TestCertificates {
    dir: tempfile::TempDir,
}

impl TestCertificates {
    /// Makes a fresh CA and a server certificate it signed.
    ///
    /// # Panics
    /// When `openssl` is missing or fails.
    pub fn new() -> Self {
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("no temp dir: {e}"));
        make_certificates(dir.path());
        TestCertificates { dir }
    }

    /// The directory holding the files.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// The PEM file of the CA that signed the server certificate.
    pub fn ca_cert(&self) -> PathBuf {
        self.dir.path().join("ca.crt")
    }

    /// The server certificate (PEM).
    pub fn server_cert(&self) -> PathBuf {
        self.dir.path().join("server.crt")
    }

    /// The server certificate's private key (PEM).
    pub fn server_key(&self) -> PathBuf {
        self.dir.path().join("server.key")
    }

    /// A client certificate for `user` (its common name) signed by the CA, and its key (PEM
    /// files in the same directory).
    ///
    /// # Panics
    /// When `openssl` fails.
    pub fn client_certificate(&self, user: &str) -> (PathBuf, PathBuf) {
        let dir = self.dir.path();
        let (crt, key, csr, ext) = (
            format!("{user}.crt"),
            format!("{user}.key"),
            format!("{user}.csr"),
            format!("{user}.cnf"),
        );
        run(
            dir,
            &[
                &["req", "-subj", &format!("/CN={user}")][..],
                &EC,
                &["-keyout", &key, "-out", &csr],
            ]
            .concat(),
        );
        std::fs::write(
            dir.join(&ext),
            "basicConstraints=CA:FALSE\nkeyUsage=critical,digitalSignature\n\
             extendedKeyUsage=clientAuth\n",
        )
        .unwrap_or_else(|e| panic!("cannot write {ext}: {e}"));
        run(
            dir,
            &[
                "x509",
                "-req",
                "-in",
                &csr,
                "-CA",
                "ca.crt",
                "-CAkey",
                "ca.key",
                "-CAcreateserial",
                "-days",
                "2",
                "-out",
                &crt,
                "-extfile",
                &ext,
            ],
        );
        (dir.join(crt), dir.join(key))
    }
}

impl Default for TestCertificates {
    fn default() -> Self {
        Self::new()
    }
}

/// Key options of every `openssl req`: a P-256 key, unencrypted.
const EC: [&str; 5] = [
    "-newkey",
    "ec",
    "-pkeyopt",
    "ec_paramgen_curve:prime256v1",
    "-nodes",
];

/// Runs `openssl args` in `dir`.
fn run(dir: &Path, args: &[&str]) {
    let out = Command::new("openssl")
        .args(args)
        .current_dir(dir)
        .output()
        .unwrap_or_else(|e| panic!("cannot run `openssl` (is it installed?): {e}"));
    assert!(
        out.status.success(),
        "openssl {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Writes `ca.crt`, `server.crt` and `server.key` (for IP 127.0.0.1 and `localhost`) to `dir`.
fn make_certificates(dir: &Path) {
    let run = |args: &[&str]| run(dir, args);
    let ec = EC;
    run(&[
        &[
            "req",
            "-x509",
            "-days",
            "2",
            "-subj",
            "/CN=eventflow test CA",
        ][..],
        &ec,
        &["-keyout", "ca.key", "-out", "ca.crt"],
        &["-addext", "basicConstraints=critical,CA:TRUE"],
        &["-addext", "keyUsage=critical,keyCertSign,cRLSign"],
    ]
    .concat());
    run(&[
        &["req", "-subj", "/CN=localhost"][..],
        &ec,
        &["-keyout", "server.key", "-out", "server.csr"],
    ]
    .concat());
    std::fs::write(
        dir.join("ext.cnf"),
        "subjectAltName=DNS:localhost,IP:127.0.0.1\nbasicConstraints=CA:FALSE\n\
         keyUsage=critical,digitalSignature\nextendedKeyUsage=serverAuth\n",
    )
    .unwrap_or_else(|e| panic!("cannot write ext.cnf: {e}"));
    run(&[
        "x509",
        "-req",
        "-in",
        "server.csr",
        "-CA",
        "ca.crt",
        "-CAkey",
        "ca.key",
        "-CAcreateserial",
        "-days",
        "2",
        "-out",
        "server.crt",
        "-extfile",
        "ext.cnf",
    ]);
}

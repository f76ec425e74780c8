//! Running a test binary's `#[ignore]`d helper test as a second OS process, for tests of
//! several processes sharing a durable subscription.
//!
//! The parent spawns `current_exe() <test> --exact --ignored` with [`OUT_ENV`] naming a file;
//! the child appends one line per thing it wants the parent to see ([`report`]) and runs until
//! the parent drops the [`ChildProcess`] (which kills it), or for at most [`CHILD_LIFETIME`].
//! The child's stderr goes to a file too ([`ChildProcess::stderr`]), printed by the parent
//! when it panics.

use std::collections::HashSet;
use std::io::Write;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::Duration;

/// The variable naming the child's output file; set only in the child.
pub const OUT_ENV: &str = "EVENTFLOW_TEST_CHILD_OUT";

/// How long a child runs at most when its parent does not kill it.
pub const CHILD_LIFETIME: Duration = Duration::from_secs(60);

/// The line a child reports once it is subscribed.
pub const READY: &str = "ready";

/// The child process; killed when dropped.
pub struct ChildProcess {
    process: std::process::Child,
    out: PathBuf,
    err: PathBuf,
    _dir: tempfile::TempDir,
}

impl ChildProcess {
    /// Runs the ignored test `test` of this test binary in a new process, with `env` set.
    pub fn spawn(test: &str, env: &[(&str, String)]) -> Self {
        let dir = tempfile::tempdir().expect("a temporary directory for the child's output");
        let out = dir.path().join("child.out");
        std::fs::write(&out, "").expect("the child's output file");
        let err = dir.path().join("child.err");
        let stderr = std::fs::File::create(&err).expect("the child's stderr file");
        let exe = std::env::current_exe().expect("the test binary's path");
        let mut command = Command::new(exe);
        command
            .args([test, "--exact", "--ignored", "--test-threads=1"])
            .env(OUT_ENV, &out)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(stderr);
        for (k, v) in env {
            command.env(k, v);
        }
        let process = command.spawn().expect("spawning the child test process");
        ChildProcess {
            process,
            out,
            err,
            _dir: dir,
        }
    }

    /// Every line the child reported so far.
    pub fn lines(&self) -> Vec<String> {
        std::fs::read_to_string(&self.out)
            .unwrap_or_default()
            .lines()
            .map(str::to_owned)
            .collect()
    }

    /// Everything the child wrote to stderr so far.
    pub fn stderr(&self) -> String {
        std::fs::read_to_string(&self.err).unwrap_or_default()
    }

    /// Waits until the child's stderr contains `needle`, or panics after `within` (or if it
    /// exited).
    pub async fn wait_stderr(&mut self, needle: &str, within: Duration) {
        let deadline = tokio::time::Instant::now() + within;
        while !self.stderr().contains(needle) {
            if let Ok(Some(status)) = self.process.try_wait() {
                panic!("the child process exited ({status}) before writing {needle:?}");
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "the child process did not write {needle:?} within {within:?}"
            );
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }

    /// Kills the child with SIGKILL (no cleanup, no further bytes sent) and waits until it is
    /// gone.
    pub fn kill(&mut self) {
        self.process.kill().expect("SIGKILL to the child process");
        let status = self.process.wait().expect("waiting for the killed child");
        assert!(!status.success(), "the child exited normally: {status}");
    }

    /// The child's process id.
    pub fn id(&self) -> u32 {
        self.process.id()
    }

    /// Sends `signal` (`"STOP"`, `"CONT"`, ...) to the child with the `kill` command.
    pub fn signal(&self, signal: &str) {
        let status = Command::new("kill")
            .args([format!("-{signal}"), self.process.id().to_string()])
            .status()
            .expect("running kill");
        assert!(status.success(), "kill -{signal} failed: {status}");
    }

    /// Whether the child has exited.
    pub fn has_exited(&mut self) -> bool {
        matches!(self.process.try_wait(), Ok(Some(_)))
    }

    /// The lines other than [`READY`].
    pub fn reported(&self) -> HashSet<String> {
        self.lines().into_iter().filter(|l| l != READY).collect()
    }

    /// Waits until the child reported [`READY`], or panics after `within` (or if it exited).
    pub async fn wait_ready(&mut self, within: Duration) {
        let deadline = tokio::time::Instant::now() + within;
        while !self.lines().iter().any(|l| l == READY) {
            if let Ok(Some(status)) = self.process.try_wait() {
                panic!("the child process exited before it was ready: {status}");
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "the child process was not ready within {within:?}"
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
}

impl Drop for ChildProcess {
    fn drop(&mut self) {
        let _ = self.process.kill();
        let _ = self.process.wait();
        if std::thread::panicking() {
            eprintln!("--- the child process's stderr ---\n{}", self.stderr());
        }
    }
}

/// In a child: the output file, or `None` when this is a normal test run.
pub fn child_out() -> Option<PathBuf> {
    std::env::var_os(OUT_ENV).map(PathBuf::from)
}

/// In a child: appends `line` to the output file.
pub fn report(out: &PathBuf, line: &str) {
    let mut file = std::fs::OpenOptions::new()
        .append(true)
        .open(out)
        .expect("the child's output file");
    writeln!(file, "{line}").expect("writing the child's output");
    file.flush().expect("flushing the child's output");
}

/// A handler that records the id of every event it handles, and the set it fills.
pub fn id_collector() -> (
    std::sync::Arc<std::sync::Mutex<HashSet<String>>>,
    std::sync::Arc<dyn eventflow::Handler>,
) {
    let seen = std::sync::Arc::new(std::sync::Mutex::new(HashSet::new()));
    let s = seen.clone();
    let handler = eventflow::sync_handler(move |e| {
        s.lock().expect("collector lock").insert(e.id.to_string());
        Ok(())
    });
    (seen, std::sync::Arc::new(handler))
}

/// Publishes 100 `split.work` events on `bus`, then waits (at most `within`) until every one
/// reached exactly one of the two processes sharing a name (`mine` here, `second` there, each
/// with some) and also the other service (`other`), which has a name of its own.
pub async fn publish_and_check_split(
    bus: &dyn eventflow::EventBus,
    mine: &std::sync::Mutex<HashSet<String>>,
    second: &ChildProcess,
    other: &std::sync::Mutex<HashSet<String>>,
    within: Duration,
) {
    let mut ids = HashSet::new();
    for i in 0..100 {
        let event = eventflow::Event::new("split.work", serde_json::json!({ "n": i }))
            .expect("valid event");
        ids.insert(event.id.to_string());
        bus.publish(event).await.expect("published");
    }
    let deadline = tokio::time::Instant::now() + within;
    loop {
        let theirs = second.reported();
        let here = mine.lock().expect("collector lock").clone();
        let elsewhere = other.lock().expect("collector lock").clone();
        let all: HashSet<String> = here.union(&theirs).cloned().collect();
        if ids.is_subset(&all) && ids.is_subset(&elsewhere) {
            let both = here.intersection(&theirs).count();
            assert_eq!(both, 0, "{both} events went to both processes of one name");
            assert!(
                !here.is_empty() && !theirs.is_empty(),
                "one name in two processes did not split the events: {} here, {} there",
                here.len(),
                theirs.len()
            );
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "not every event arrived: {} of 100 across the two processes, {} of 100 at the \
             other service",
            ids.intersection(&all).count(),
            ids.intersection(&elsewhere).count()
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

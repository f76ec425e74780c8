//! What a leased relay needs besides its loop: [`Halt`] (stop, or lease lost) and [`Tenure`]
//! (holding the lease: renewing it every heartbeat, knowing when it is surely still ours).

use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio::time::Instant;

use crate::error::Result;
use crate::handler::sync;
use crate::lease::{Lease, LeaseStore};

/// Why a relay's work ends: the stop flag, or (while holding a lease) the lease lost.
pub(super) struct Halt {
    pub(super) stop: watch::Receiver<bool>,
    lost: Option<watch::Receiver<bool>>,
}

impl Halt {
    pub(super) fn new(stop: watch::Receiver<bool>, lost: Option<watch::Receiver<bool>>) -> Self {
        Halt { stop, lost }
    }

    pub(super) fn is_stopped(&self) -> bool {
        *self.stop.borrow()
    }

    /// Runs `future` unless stopped (or stopped meanwhile), whether or not the lease is lost
    /// meanwhile: for a publish already under way and the fenced checkpoint write after it,
    /// where the store, not this process's view of the lease, decides. `None` when stopped.
    pub(super) async fn run_through<F: std::future::Future>(
        &mut self,
        future: F,
    ) -> Option<F::Output> {
        if *self.stop.borrow() {
            return None;
        }
        tokio::select! {
            biased;
            _ = self.stop.wait_for(|s| *s) => None,
            out = future => Some(out),
        }
    }

    /// Runs `future` unless halted (or halted meanwhile); `None` when halted.
    pub(super) async fn run<F: std::future::Future>(&mut self, future: F) -> Option<F::Output> {
        if *self.stop.borrow() || self.lost.as_ref().is_some_and(|l| *l.borrow()) {
            return None;
        }
        let lost = &mut self.lost;
        let lost = async move {
            match lost {
                // An ended keeper (its sender gone) counts as lost too.
                Some(lost) => {
                    let _ = lost.wait_for(|l| *l).await;
                }
                None => std::future::pending::<()>().await,
            }
        };
        tokio::select! {
            biased;
            // `wait_for` also ends when the handle (the sender) is gone: stop then too.
            _ = self.stop.wait_for(|s| *s) => None,
            () = lost => None,
            out = future => Some(out),
        }
    }
}

/// A held lease, renewed every heartbeat by a keeper task until dropped.
pub(super) struct Tenure {
    leases: Arc<dyn LeaseStore>,
    lease: Lease,
    /// Until when the lease is surely ours: the start of the last successful renewal (or of the
    /// claim) plus the time-to-live, on this process's monotonic clock.
    valid_until: Arc<Mutex<Instant>>,
    lost: Arc<watch::Sender<bool>>,
    keeper: JoinHandle<()>,
}

impl Tenure {
    pub(super) fn start(
        leases: Arc<dyn LeaseStore>,
        lease: Lease,
        claimed_at: Instant,
        ttl: Duration,
        heartbeat: Duration,
    ) -> Self {
        let valid_until = Arc::new(Mutex::new(claimed_at + ttl));
        let lost = Arc::new(watch::channel(false).0);
        let keeper = tokio::spawn(keep(
            Arc::clone(&leases),
            lease.clone(),
            Arc::clone(&valid_until),
            Arc::clone(&lost),
            ttl,
            heartbeat,
        ));
        Tenure {
            leases,
            lease,
            valid_until,
            lost,
            keeper,
        }
    }

    /// Set once the lease is lost.
    pub(super) fn lost(&self) -> watch::Receiver<bool> {
        self.lost.subscribe()
    }

    /// Whether the lease is surely still ours: not known lost, and renewed within its
    /// time-to-live by this process's clock.
    pub(super) fn is_valid(&self) -> bool {
        !*self.lost.borrow() && Instant::now() < *sync::lock(&self.valid_until)
    }

    pub(super) fn mark_lost(&self) {
        self.lost.send_replace(true);
    }

    /// The fenced checkpoint write under this lease.
    pub(super) async fn fenced_checkpoint(&self, name: &str, position: u64) -> Result<()> {
        self.leases
            .fenced_checkpoint(&self.lease, name, position)
            .await
    }
}

impl Drop for Tenure {
    fn drop(&mut self) {
        self.keeper.abort();
    }
}

/// Renews `lease` every `heartbeat`; marks it lost when the store says so or when no renewal
/// succeeded within the time-to-live.
async fn keep(
    leases: Arc<dyn LeaseStore>,
    lease: Lease,
    valid_until: Arc<Mutex<Instant>>,
    lost: Arc<watch::Sender<bool>>,
    ttl: Duration,
    heartbeat: Duration,
) {
    let mut next = Instant::now() + heartbeat;
    loop {
        let until = *sync::lock(&valid_until);
        tokio::time::sleep_until(next.min(until)).await;
        if Instant::now() >= *sync::lock(&valid_until) {
            tracing::warn!(lease = %lease.name, owner = %lease.owner, epoch = lease.epoch, "lease: not renewed within its time-to-live; giving it up");
            lost.send_replace(true);
            return;
        }
        let sent = Instant::now();
        next = sent + heartbeat;
        match leases.renew(&lease, ttl).await {
            Ok(Some(_)) => {
                let mut until = sync::lock(&valid_until);
                *until = (*until).max(sent + ttl);
            }
            Ok(None) => {
                tracing::warn!(lease = %lease.name, owner = %lease.owner, epoch = lease.epoch, "lease: lost to another owner");
                lost.send_replace(true);
                return;
            }
            Err(error) => {
                tracing::warn!(lease = %lease.name, %error, "lease: cannot renew; retrying");
            }
        }
    }
}

//! The checks every [`LeaseStore`] passes: exclusive ownership under racing claimants, epochs
//! that increment on every change of hands, takeover after expiry (and not before), renewal
//! that fails once the lease is lost, release, fenced checkpoint writes that refuse a stale
//! owner and never move backwards, and live-only membership.

use std::time::{Duration, Instant};

use futures_util::future::join_all;

use crate::error::{Error, Result};
use crate::lease::{Lease, LeaseStore};
use crate::store::CheckpointStore;

/// How long the checks wait for something that must happen (an expiry) before failing.
const PATIENCE: Duration = Duration::from_secs(10);

/// Runs every check against `leases`, reading fenced checkpoints back through `checkpoints`
/// (the checkpoint store `leases` fences), with lease, group and checkpoint names that start
/// with `prefix` (unique per run, so runs can share a store).
///
/// # Errors
/// The stores' errors.
///
/// # Panics
/// When the store breaks a promise of [`LeaseStore`].
pub async fn run(
    leases: &dyn LeaseStore,
    checkpoints: &dyn CheckpointStore,
    prefix: &str,
) -> Result<()> {
    racing_claimants_get_one_lease(leases, prefix).await?;
    owner_renews_and_others_wait(leases, prefix).await?;
    expired_lease_is_taken_over_with_next_epoch(leases, checkpoints, prefix).await?;
    release_hands_over_at_once(leases, prefix).await?;
    fenced_checkpoint_never_moves_backwards(leases, checkpoints, prefix).await?;
    membership_lists_live_members(leases, prefix).await?;
    Ok(())
}

const LONG: Duration = Duration::from_secs(60);

async fn acquire(leases: &dyn LeaseStore, name: &str, owner: &str, ttl: Duration) -> Result<Lease> {
    match leases.try_acquire(name, 0, owner, ttl).await? {
        Some(lease) => Ok(lease),
        None => panic!("lease {name:?} should be free for {owner:?}"),
    }
}

async fn racing_claimants_get_one_lease(leases: &dyn LeaseStore, prefix: &str) -> Result<()> {
    let name = format!("{prefix}-race");
    for partition in 0..4u32 {
        let owners: Vec<String> = (0..8).map(|i| format!("w{i}")).collect();
        let claims = join_all(
            owners
                .iter()
                .map(|owner| leases.try_acquire(&name, partition, owner, LONG)),
        )
        .await;
        let mut won = Vec::new();
        for claim in claims {
            if let Some(lease) = claim? {
                won.push(lease);
            }
        }
        assert_eq!(
            won.len(),
            1,
            "exactly one of 8 racing claimants gets partition {partition}: {won:?}"
        );
        assert_eq!(won[0].epoch, 1, "a lease never held starts at epoch 1");
        assert_eq!(won[0].partition, partition);
    }
    let listed = leases.list(Some(&name)).await?;
    assert_eq!(
        listed.len(),
        4,
        "list shows each partition once: {listed:?}"
    );
    assert!(
        listed.windows(2).all(|w| w[0].partition < w[1].partition),
        "list is ordered by partition"
    );
    Ok(())
}

async fn owner_renews_and_others_wait(leases: &dyn LeaseStore, prefix: &str) -> Result<()> {
    let name = format!("{prefix}-renew");
    let first = acquire(leases, &name, "a", Duration::from_secs(30)).await?;
    assert!(
        leases.try_acquire(&name, 0, "b", LONG).await?.is_none(),
        "a live lease cannot be claimed by another owner"
    );
    let again = acquire(leases, &name, "a", LONG).await?;
    assert_eq!(
        again.epoch, first.epoch,
        "re-acquiring one's own live lease keeps the epoch"
    );
    assert!(again.expires_at > first.expires_at, "and extends it");
    let renewed = leases
        .renew(&again, LONG)
        .await?
        .unwrap_or_else(|| panic!("the holder renews its live lease"));
    assert_eq!(renewed.epoch, first.epoch, "renewing keeps the epoch");
    assert_eq!(renewed.owner, "a");
    let listed = leases.list(Some(&name)).await?;
    assert_eq!(listed.len(), 1);
    assert_eq!(listed[0].owner, "a", "list names the owner");
    assert_eq!(listed[0].epoch, first.epoch, "list names the epoch");
    Ok(())
}

async fn expired_lease_is_taken_over_with_next_epoch(
    leases: &dyn LeaseStore,
    checkpoints: &dyn CheckpointStore,
    prefix: &str,
) -> Result<()> {
    let name = format!("{prefix}-expiry");
    let checkpoint = format!("{prefix}-expiry-cp");
    let ttl = Duration::from_millis(400);
    let started = Instant::now();
    let old = acquire(leases, &name, "a", ttl).await?;
    leases.fenced_checkpoint(&old, &checkpoint, 10).await?;
    assert!(
        leases.try_acquire(&name, 0, "b", ttl).await?.is_none(),
        "a lease cannot be taken over before it expires"
    );
    let new = loop {
        if let Some(lease) = leases.try_acquire(&name, 0, "b", LONG).await? {
            break lease;
        }
        assert!(
            started.elapsed() < PATIENCE,
            "an expired lease must be taken over (waited {PATIENCE:?} for a {ttl:?} lease)"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    // The store's clock may run a little apart from ours; a takeover far earlier than the
    // time-to-live is a broken expiry.
    assert!(
        started.elapsed() + Duration::from_millis(100) >= ttl,
        "taken over after {:?}, before the {ttl:?} time-to-live",
        started.elapsed()
    );
    assert_eq!(new.epoch, old.epoch + 1, "a takeover increments the epoch");
    assert_eq!(new.owner, "b");
    assert!(
        leases.renew(&old, LONG).await?.is_none(),
        "renewing a lease after losing it fails"
    );
    assert!(
        !leases.release(&old).await?,
        "releasing a lost lease does nothing"
    );
    match leases.fenced_checkpoint(&old, &checkpoint, 20).await {
        Err(Error::LeaseLost { epoch, .. }) => assert_eq!(epoch, old.epoch),
        other => panic!("a fenced write by the stale owner must fail with LeaseLost: {other:?}"),
    }
    assert_eq!(
        checkpoints.load_checkpoint(&checkpoint).await?,
        10,
        "the stale owner's fenced write changed nothing"
    );
    leases.fenced_checkpoint(&new, &checkpoint, 20).await?;
    assert_eq!(checkpoints.load_checkpoint(&checkpoint).await?, 20);
    assert!(
        leases.renew(&new, LONG).await?.is_some(),
        "the new owner holds it"
    );

    // A lease that expired without a takeover is lost too: renewing it fails, claiming it
    // again (even by the same owner) increments the epoch.
    let name = format!("{prefix}-lapse");
    let ttl = Duration::from_millis(150);
    let short = acquire(leases, &name, "a", ttl).await?;
    assert!(
        leases.try_acquire(&name, 0, "probe", LONG).await?.is_none(),
        "a live lease cannot be claimed by another owner"
    );
    // Expiry is the passing of the time-to-live itself: wait it out (with room for the store's
    // clock), then the lease must be gone.
    tokio::time::sleep(ttl + Duration::from_millis(150)).await;
    assert!(
        leases.renew(&short, LONG).await?.is_none(),
        "renewing a lease after it expired fails"
    );
    let again = acquire(leases, &name, "a", LONG).await?;
    assert_eq!(
        again.epoch,
        short.epoch + 1,
        "re-claiming an expired lease increments the epoch"
    );
    Ok(())
}

async fn release_hands_over_at_once(leases: &dyn LeaseStore, prefix: &str) -> Result<()> {
    let name = format!("{prefix}-release");
    let a = acquire(leases, &name, "a", LONG).await?;
    assert!(leases.release(&a).await?, "the holder releases its lease");
    assert!(
        leases.renew(&a, LONG).await?.is_none(),
        "a released lease cannot be renewed"
    );
    let b = acquire(leases, &name, "b", LONG).await?;
    assert_eq!(
        b.epoch,
        a.epoch + 1,
        "a claim after a release increments the epoch"
    );
    assert!(!leases.release(&a).await?, "a stale release does nothing");
    assert!(
        leases.renew(&b, LONG).await?.is_some(),
        "a stale release leaves the new owner's lease alone"
    );
    Ok(())
}

async fn fenced_checkpoint_never_moves_backwards(
    leases: &dyn LeaseStore,
    checkpoints: &dyn CheckpointStore,
    prefix: &str,
) -> Result<()> {
    let name = format!("{prefix}-fence");
    let checkpoint = format!("{prefix}-fence-cp");
    let lease = acquire(leases, &name, "a", LONG).await?;
    leases.fenced_checkpoint(&lease, &checkpoint, 100).await?;
    leases.fenced_checkpoint(&lease, &checkpoint, 50).await?;
    assert_eq!(
        checkpoints.load_checkpoint(&checkpoint).await?,
        100,
        "a fenced write never moves a checkpoint backwards"
    );
    // An owner that never held the lease, and a made-up epoch, are fenced off too.
    let mut stranger = lease.clone();
    stranger.owner = "stranger".into();
    assert!(matches!(
        leases.fenced_checkpoint(&stranger, &checkpoint, 200).await,
        Err(Error::LeaseLost { .. })
    ));
    let mut future = lease.clone();
    future.epoch += 1;
    assert!(matches!(
        leases.fenced_checkpoint(&future, &checkpoint, 200).await,
        Err(Error::LeaseLost { .. })
    ));
    assert!(matches!(
        leases.fenced_checkpoint(&lease, "", 200).await,
        Err(Error::InvalidArgument(_))
    ));
    assert_eq!(checkpoints.load_checkpoint(&checkpoint).await?, 100);
    // The unfenced store keeps the same rule.
    checkpoints.save_checkpoint(&checkpoint, 70).await?;
    assert_eq!(
        checkpoints.load_checkpoint(&checkpoint).await?,
        100,
        "save_checkpoint never moves a checkpoint backwards"
    );
    checkpoints.reset_checkpoint(&checkpoint).await?;
    assert_eq!(
        checkpoints.load_checkpoint(&checkpoint).await?,
        0,
        "reset goes to 0"
    );
    Ok(())
}

async fn membership_lists_live_members(leases: &dyn LeaseStore, prefix: &str) -> Result<()> {
    let group = format!("{prefix}-group");
    leases.join(&group, "b", LONG).await?;
    leases.join(&group, "a", LONG).await?;
    leases.heartbeat(&group, "a", LONG).await?;
    assert_eq!(
        leases.members(&group).await?,
        vec!["a", "b"],
        "sorted live members"
    );
    leases.leave(&group, "b").await?;
    assert_eq!(
        leases.members(&group).await?,
        vec!["a"],
        "a member that left is gone"
    );
    leases.join(&group, "c", Duration::from_millis(150)).await?;
    assert_eq!(leases.members(&group).await?, vec!["a", "c"]);
    let started = Instant::now();
    while leases.members(&group).await? != vec!["a"] {
        assert!(
            started.elapsed() < PATIENCE,
            "a member without heartbeat must drop out"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // Joining again after expiring brings a member back.
    leases.join(&group, "c", LONG).await?;
    assert_eq!(leases.members(&group).await?, vec!["a", "c"]);
    let stored = leases.list(None).await?.len();
    assert!(stored > 0, "list without a name shows every lease");
    assert!(
        leases
            .members(&format!("{prefix}-nobody"))
            .await?
            .is_empty(),
        "an unknown group has no members"
    );
    Ok(())
}

use super::*;

#[tokio::test]
async fn the_memory_store_passes_the_lease_kit() {
    let leases = MemoryLeaseStore::new();
    let checkpoints = crate::store::memory::InMemoryCheckpointStore::shared_with(&leases);
    crate::testing::conformance::leases::run(&leases, &checkpoints, "kit")
        .await
        .unwrap_or_else(|e| panic!("{e}"));
}

#[tokio::test]
async fn bad_arguments_are_typed_errors() {
    let leases = MemoryLeaseStore::new();
    let ttl = Duration::from_secs(1);
    for result in [
        leases.try_acquire("", 0, "a", ttl).await,
        leases.try_acquire("n", 0, "", ttl).await,
        leases.try_acquire("n", 0, "a", Duration::ZERO).await,
    ] {
        assert!(
            matches!(result, Err(Error::InvalidArgument(_))),
            "{result:?}"
        );
    }
    assert!(matches!(
        leases.join("", "m", ttl).await,
        Err(Error::InvalidArgument(_))
    ));
}

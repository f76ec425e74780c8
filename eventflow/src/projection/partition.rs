//! Virtual partitions: which partition an event belongs to, and which live worker owns a
//! partition.
//!
//! Both answers must be the same in every process, every release and on every platform, so
//! both use XXH3 (64 bits, seed 0), a fixed published function, never std's randomly seeded
//! hasher:
//! - an event's partition is `xxh3(key) mod P`, the key being its stream id (projections) or its
//!   correlation id (sagas): every event of one stream lands in one partition, in order;
//! - a partition's owner is chosen by rendezvous (highest random weight) hashing over the live
//!   members: the member with the highest `xxh3(member, name, partition)`. When a member joins
//!   it takes about `P / n` partitions from the others; when one leaves only its partitions
//!   move. Every worker computes the same answer from the same member list, with no
//!   coordinator.

use xxhash_rust::xxh3::xxh3_64;

use crate::error::{Error, Result};
use crate::event::Event;

/// The default number of partitions of a partitioned projection or saga.
pub const DEFAULT_PARTITIONS: u32 = 16;

/// The largest number of partitions accepted.
pub const MAX_PARTITIONS: u32 = 4096;

/// What an event is partitioned by.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
#[non_exhaustive]
pub enum PartitionKey {
    /// Its stream id: order is kept within a stream (projections).
    #[default]
    Stream,
    /// Its correlation id, or its own id when it has none (a saga's starting event without a
    /// correlation id starts the instance named after its id): one saga instance is handled in
    /// one partition.
    Correlation,
}

impl PartitionKey {
    /// The key of `event`.
    pub fn of<'a>(&self, event: &'a Event) -> std::borrow::Cow<'a, str> {
        match self {
            PartitionKey::Stream => event.stream_id.as_deref().unwrap_or_default().into(),
            PartitionKey::Correlation => match &event.correlation_id {
                Some(c) => c.as_str().into(),
                None => event.id.to_string().into(),
            },
        }
    }
}

/// Checks a partition count: 1 to [`MAX_PARTITIONS`].
///
/// # Errors
/// [`Error::InvalidArgument`] otherwise.
pub fn check_partitions(partitions: u32) -> Result<u32> {
    if partitions == 0 || partitions > MAX_PARTITIONS {
        return Err(Error::InvalidArgument(format!(
            "partitions must be 1 to {MAX_PARTITIONS}, not {partitions}"
        )));
    }
    Ok(partitions)
}

/// The partition (0 to `partitions - 1`) of `key`: `xxh3_64(key) mod partitions`, the same in
/// every process. `partitions` of 0 counts as 1.
pub fn partition_of(key: &str, partitions: u32) -> u32 {
    let p = u64::from(partitions.max(1));
    u32::try_from(xxh3_64(key.as_bytes()) % p).unwrap_or(0)
}

/// The weight of `member` for `partition` of the work `name` (rendezvous hashing).
fn weight(member: &str, name: &str, partition: u32) -> u64 {
    let mut bytes = Vec::with_capacity(member.len() + name.len() + 6);
    bytes.extend_from_slice(member.as_bytes());
    bytes.push(0);
    bytes.extend_from_slice(name.as_bytes());
    bytes.push(0);
    bytes.extend_from_slice(&partition.to_le_bytes());
    xxh3_64(&bytes)
}

/// The member that owns `partition` of `name` among `members` (rendezvous hashing; ties go to
/// the smaller id), or `None` when there are none.
pub fn owner_of<'a, S: AsRef<str>>(
    members: &'a [S],
    name: &str,
    partition: u32,
) -> Option<&'a str> {
    members.iter().map(AsRef::as_ref).max_by(|a, b| {
        weight(a, name, partition)
            .cmp(&weight(b, name, partition))
            .then_with(|| b.cmp(a))
    })
}

/// The partitions of `name` (out of `partitions`) that `me` owns among `members`, ascending.
/// When `me` is not among them, none.
pub fn assigned<S: AsRef<str>>(members: &[S], me: &str, name: &str, partitions: u32) -> Vec<u32> {
    (0..partitions.max(1))
        .filter(|&p| owner_of(members, name, p) == Some(me))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_partition_of_a_key_is_fixed() {
        // Fixed values: a change of hash function would move every stream to another partition
        // and break running deployments, so it must fail here first.
        assert_eq!(xxh3_64(b""), 0x2d06_8005_38d3_94c2);
        assert_eq!(partition_of("order-1", 16), partition_of("order-1", 16));
        let counts = (0..16_000).fold([0u32; 16], |mut c, i| {
            c[partition_of(&format!("order-{i}"), 16) as usize] += 1;
            c
        });
        assert!(
            counts.iter().all(|&n| (800..1200).contains(&n)),
            "{counts:?}"
        );
        assert_eq!(partition_of("anything", 1), 0);
        assert_eq!(partition_of("anything", 0), 0);
    }

    #[test]
    fn every_partition_has_one_owner_and_a_join_moves_only_its_share() {
        let three = ["w-a", "w-b", "w-c"];
        let mut owned: Vec<u32> = three
            .iter()
            .flat_map(|m| assigned(&three, m, "orders", 64))
            .collect();
        owned.sort_unstable();
        assert_eq!(owned, (0..64).collect::<Vec<_>>());
        for m in three {
            let n = assigned(&three, m, "orders", 64).len();
            assert!((10..=34).contains(&n), "{m} owns {n} of 64");
        }
        let four = ["w-a", "w-b", "w-c", "w-d"];
        let moved = (0..64)
            .filter(|&p| owner_of(&three, "orders", p) != owner_of(&four, "orders", p))
            .collect::<Vec<_>>();
        // Only partitions the newcomer takes move.
        assert!(
            moved
                .iter()
                .all(|&p| owner_of(&four, "orders", p) == Some("w-d"))
        );
        assert_eq!(moved.len(), assigned(&four, "w-d", "orders", 64).len());
        assert!(assigned(&three, "w-z", "orders", 64).is_empty());
        assert_eq!(owner_of::<&str>(&[], "orders", 0), None);
    }

    #[test]
    fn partition_counts_are_checked() {
        assert!(check_partitions(0).is_err());
        assert!(check_partitions(MAX_PARTITIONS + 1).is_err());
        assert_eq!(check_partitions(16).ok(), Some(16));
    }
}

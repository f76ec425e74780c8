//! Unit tests of the projection runner's pieces.
#![allow(clippy::unwrap_used)]

use std::time::Duration;

use super::{Backoff, Filter, guarded};

#[test]
fn backoff_doubles_up_to_the_cap() {
    let b = Backoff {
        initial: Duration::from_millis(10),
        max: Duration::from_millis(70),
        max_attempts: None,
    };
    let delays: Vec<u128> = (1..=6).map(|a| b.delay(a).as_millis()).collect();
    assert_eq!(delays, [10, 20, 40, 70, 70, 70]);
    assert_eq!(b.delay(400), Duration::from_millis(70), "no overflow");
}

#[test]
fn filter_matches_patterns_and_rejects_bad_ones() {
    let f = Filter::parse(&["order.*".into(), "payment.>".into()]).unwrap();
    assert!(f.matches("order.placed"));
    assert!(f.matches("payment.card.declined"));
    assert!(!f.matches("order.item.added"));
    assert!(!f.matches("user.created"));
    assert!(
        Filter::parse(&["*".into()])
            .unwrap()
            .matches("anything.at.all")
    );
    assert!(Filter::parse(&["Order".into()]).is_err());
}

#[tokio::test]
async fn a_panicking_handler_becomes_an_error() {
    let err = guarded(async { panic!("boom") }).await.unwrap_err();
    assert!(err.to_string().contains("boom"));
    assert!(guarded(async { Ok(()) }).await.is_ok());
}

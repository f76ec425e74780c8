use serde_json::json;

use super::*;

#[test]
fn valid_event_types_are_accepted() {
    for name in [
        "user.created",
        "health_check.error",
        "a",
        "a-b.c_d.9",
        &"a".repeat(255),
    ] {
        validate_event_type(name).unwrap_or_else(|e| panic!("{name:?} rejected: {e}"));
    }
}

#[test]
fn invalid_event_types_are_rejected_with_the_name() {
    let long = "a".repeat(256);
    for name in [
        "",
        " ",
        "user created",
        "user.*",
        "user.>",
        "*",
        ">",
        ".user",
        "user.",
        "user..created",
        "User.Created",
        "user.\u{0}",
        "user\tcreated",
        "ünï.code",
        "user/created",
        &long,
    ] {
        match validate_event_type(name) {
            Err(Error::InvalidEventType { name: got, reason }) => {
                assert_eq!(got, name);
                assert!(!reason.is_empty());
            }
            other => panic!("{name:?} was not rejected: {other:?}"),
        }
    }
    assert!(Event::new("bad type", json!({})).is_err());
}

#[test]
fn envelope_round_trips_through_json() {
    let parent = Event::new("order.placed", json!({"id": "o-1"}))
        .unwrap()
        .with_correlation("c-1");
    let event = Event::new("payment.received", json!({"amount": 12.5, "tags": ["a"]}))
        .unwrap()
        .with_metadata(
            Metadata::default()
                .user("u")
                .tenant("t")
                .request("r")
                .trace("tr")
                .with("k", json!({"nested": true})),
        )
        .with_source("billing")
        .with_version(3)
        .caused_by(&parent);
    let bytes = event.to_json().unwrap();
    let back = Event::from_json(&bytes).unwrap();
    assert_eq!(back, event);
    // The wire form is stable: field names are part of the contract.
    let value: serde_json::Value = serde_json::from_slice(&bytes).unwrap();
    for key in [
        "id",
        "type",
        "payload",
        "metadata",
        "timestamp",
        "source",
        "correlation_id",
        "causation_id",
        "version",
    ] {
        assert!(value.get(key).is_some(), "missing {key} in {value}");
    }
    assert_eq!(value["metadata"]["tenant_id"], "t");
    assert!(value.get("position").is_none());
}

#[test]
fn an_older_envelope_without_optional_fields_decodes() {
    let id = Uuid::now_v7();
    let raw = format!(
        r#"{{"id":"{id}","type":"user.created","payload":null,"timestamp":"2026-01-01T00:00:00Z"}}"#
    );
    let event = Event::from_json(raw.as_bytes()).unwrap();
    assert_eq!(event.version, 1);
    assert_eq!(event.metadata, Metadata::default());
}

#[test]
fn caused_by_copies_correlation_and_sets_causation() {
    let root = Event::new("a.b", json!(null)).unwrap();
    let child = Event::new("a.c", json!(null)).unwrap().caused_by(&root);
    assert_eq!(child.correlation_id, Some(root.id.to_string()));
    assert_eq!(child.causation_id, Some(root.id.to_string()));
    let grandchild = Event::new("a.d", json!(null)).unwrap().caused_by(&child);
    assert_eq!(grandchild.correlation_id, Some(root.id.to_string()));
    assert_eq!(grandchild.causation_id, Some(child.id.to_string()));
}

#[test]
fn payload_access_is_an_error_not_a_panic() {
    #[derive(Debug, serde::Deserialize)]
    struct Order {
        #[allow(dead_code)]
        id: u32,
    }
    let event = Event::new("order.placed", json!({"id": "not a number"})).unwrap();
    let err = event.payload_as::<Order>().unwrap_err();
    assert!(matches!(err, Error::Decode { ref event_type, .. } if event_type == "order.placed"));
    assert!(Event::from_json(b"{not json").is_err());
    let bad_type = br#"{"id":"0190a5d0-0000-7000-8000-000000000000","type":"A B","payload":1,"timestamp":"2026-01-01T00:00:00Z"}"#;
    assert!(matches!(
        Event::from_json(bad_type),
        Err(Error::InvalidEventType { .. })
    ));
}

#[test]
fn ids_are_v7_and_sort_by_time() {
    let a = Event::new("a.b", json!(1)).unwrap();
    let b = Event::new("a.b", json!(2)).unwrap();
    assert_eq!(a.id.get_version_num(), 7);
    assert!(a.id < b.id);
}

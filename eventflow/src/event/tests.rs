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

/// A JSON value nested `depth` arrays deep, built without recursion.
fn nested(depth: usize) -> serde_json::Value {
    let mut value = json!("bottom");
    for _ in 0..depth {
        value = serde_json::Value::Array(vec![value]);
    }
    value
}

/// An envelope whose payload is `depth` arrays deep, as JSON text.
fn envelope_with_depth(depth: usize) -> String {
    format!(
        r#"{{"id":"0190a5d0-0000-7000-8000-000000000000","type":"deep.event","payload":{}1{},"timestamp":"2026-01-01T00:00:00Z"}}"#,
        "[".repeat(depth),
        "]".repeat(depth)
    )
}

fn assert_too_deep(result: Result<Event>, field: &str, depth: usize) {
    match result {
        Err(Error::PayloadTooDeep {
            event_type,
            field: got_field,
            depth: got,
            limit,
        }) => {
            assert_eq!(event_type, "deep.event");
            assert_eq!(got_field, field);
            assert_eq!(got, depth);
            assert_eq!(limit, MAX_PAYLOAD_DEPTH);
        }
        other => panic!("expected PayloadTooDeep, got {other:?}"),
    }
}

#[test]
fn payload_depth_counts_arrays_and_objects() {
    assert_eq!(payload_depth(&json!(null)), 0);
    assert_eq!(payload_depth(&json!([])), 1);
    assert_eq!(payload_depth(&json!({"a": [1, {"b": {}}], "c": 2})), 4);
    assert_eq!(payload_depth(&nested(100)), 100);
}

#[test]
fn a_payload_at_the_limit_round_trips() {
    let payload = nested(MAX_PAYLOAD_DEPTH);
    let event = Event::new("deep.event", &payload)
        .unwrap()
        .with_metadata(Metadata::default().with("k", nested(MAX_PAYLOAD_DEPTH - 1)));
    event.validate().unwrap();
    let back = Event::from_json(&event.to_json().unwrap()).unwrap();
    assert_eq!(back, event);
    assert_eq!(payload_depth(&back.payload), 100);
}

/// Runs on a normal test thread (2 MiB stack unless RUST_MIN_STACK says otherwise): building,
/// checking, rejecting and disposing of 100,000 levels must not recurse.
#[test]
fn payloads_200_and_100000_deep_are_rejected_where_events_are_built() {
    for depth in [200, 100_000] {
        let deep = nested(depth);
        // Passed by reference: Event::new can reject it without touching the caller's value.
        // The probe stops counting at 129 levels.
        let counted = depth.min(limits::PROBE_LIMIT + 1);
        assert_too_deep(Event::new("deep.event", &deep), "payload", counted);

        // In an event built by hand: validate names the exact depth.
        let mut event = Event::new("deep.event", json!(null)).unwrap();
        event.payload = deep;
        match event.validate() {
            Err(Error::PayloadTooDeep { depth: got, .. }) => assert_eq!(got, depth),
            other => panic!("expected PayloadTooDeep, got {other:?}"),
        }
        // The owned check dismantles it, so dropping the event is safe.
        assert_too_deep(
            event
                .validate_owned()
                .map(|()| Event::new("x", ()).unwrap()),
            "payload",
            depth,
        );
        assert_eq!(event.payload, serde_json::Value::Null);
        drop(event);

        // The metadata's custom map is held to the same limit (the map counts as one level).
        let mut event = Event::new("deep.event", json!(null)).unwrap();
        event.metadata.custom.insert("k".into(), nested(depth));
        assert_too_deep(
            crate::event::validate_owned(std::slice::from_mut(&mut event))
                .map(|()| Event::new("x", ()).unwrap()),
            "metadata",
            depth + 1,
        );
        drop(event);

        // From JSON text: serde_json alone would fail with its recursion limit.
        let text = envelope_with_depth(depth);
        assert_too_deep(Event::from_json(text.as_bytes()), "payload", depth);
    }
    // Passed by value, a value too deep to drop safely is rejected (and leaked, not dropped).
    assert_too_deep(Event::new("deep.event", nested(100_000)), "payload", 129);
    // Just over the limit, by value: exact depth, dropped normally.
    assert_too_deep(Event::new("deep.event", nested(101)), "payload", 101);
    assert_too_deep(
        Event::from_json(envelope_with_depth(101).as_bytes()),
        "payload",
        101,
    );
}

#[test]
fn from_json_names_deep_metadata_and_keeps_other_decode_errors() {
    let depth = 300;
    let text = format!(
        r#"{{"type":"deep.event","metadata":{{"user_id":"u","custom":{{"k":{}0{}}}}},"payload":{{}}}}"#,
        "[".repeat(depth),
        "]".repeat(depth)
    );
    assert_too_deep(Event::from_json(text.as_bytes()), "metadata", depth + 1);
    // Brackets inside strings do not count.
    let text = format!(
        r#"{{"type":"deep.event","payload":"{}","bad":true"#,
        "[".repeat(500)
    );
    assert!(matches!(
        Event::from_json(text.as_bytes()),
        Err(Error::Decode { .. })
    ));
}

#[test]
fn dismantle_takes_apart_any_depth() {
    let mut object = json!(1);
    for _ in 0..100_000 {
        let mut map = serde_json::Map::new();
        map.insert("k".into(), object);
        object = serde_json::Value::Object(map);
    }
    assert_eq!(payload_depth(&object), 100_000);
    dismantle(object);
    dismantle(nested(100_000));
}

#[test]
fn payload_too_deep_says_where_how_deep_and_the_limit() {
    let err = Event::new("deep.event", nested(150)).unwrap_err();
    assert_eq!(
        err.to_string(),
        "payload of event type \"deep.event\" is nested 129 levels deep, over the limit of 100"
    );
    let err = Event::new("deep.event", nested(120)).unwrap_err();
    assert!(err.to_string().contains("nested 120 levels"), "{err}");
}

//! Passing cases of `#[derive(DomainEvent)]` and `#[derive(Aggregate)]`: unit, tuple and struct
//! variants, name and version overrides, upcasters, envelope round trips and typed errors.
#![allow(clippy::unwrap_used, missing_docs)]

use eventflow::aggregate::{Aggregate, SnapshotState};
use eventflow::{BoxError, DomainEvent, Error, Event};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Address {
    street: String,
    city: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, eventflow::DomainEvent)]
#[event(prefix = "shop.order")]
pub enum OrderEvent {
    /// Struct variant.
    Placed { order_id: String, total_cents: u64 },
    /// Newtype variant.
    Shipped(Address),
    /// Tuple variant.
    LineAdded(String, u32),
    /// Unit variant.
    Cancelled,
    /// Name override and version.
    #[event(name = "shop.order.refund-issued", version = 3, upcast(v1 = refund_v1, v2 = refund_v2))]
    Refunded { amount_cents: u64, reason: String },
    /// Serde attributes on fields keep working.
    NoteAdded {
        #[serde(rename = "text")]
        note: String,
        #[serde(default)]
        pinned: bool,
    },
}

/// v1 stored `amount` in whole units.
fn refund_v1(mut payload: Value) -> Result<Value, BoxError> {
    let amount = payload["amount"]
        .as_u64()
        .ok_or("v1 refund without amount")?;
    payload["amount_cents"] = json!(amount * 100);
    Ok(payload)
}

/// v2 had no reason.
fn refund_v2(mut payload: Value) -> Result<Value, BoxError> {
    payload["reason"] = json!("unknown");
    Ok(payload)
}

#[derive(Debug, Default, PartialEq, Serialize, Deserialize, eventflow::Aggregate)]
#[aggregate(name = "order", event = OrderEvent, snapshot_every = 10, state_version = 2)]
pub struct Order {
    placed: bool,
    total_cents: u64,
    lines: Vec<(String, u32)>,
    city: Option<String>,
    cancelled: bool,
    refunded_cents: u64,
    notes: Vec<String>,
}

impl ApplyOrderEvent for Order {
    fn placed(&mut self, _order_id: String, total_cents: u64) {
        self.placed = true;
        self.total_cents = total_cents;
    }
    fn shipped(&mut self, value: Address) {
        self.city = Some(value.city);
    }
    fn line_added(&mut self, sku: String, qty: u32) {
        self.lines.push((sku, qty));
    }
    fn cancelled(&mut self) {
        self.cancelled = true;
    }
    fn refunded(&mut self, amount_cents: u64, _reason: String) {
        self.refunded_cents += amount_cents;
    }
    fn note_added(&mut self, note: String, _pinned: bool) {
        self.notes.push(note);
    }
}

fn samples() -> Vec<OrderEvent> {
    vec![
        OrderEvent::Placed {
            order_id: "o-1".into(),
            total_cents: 4200,
        },
        OrderEvent::Shipped(Address {
            street: "Main St 1".into(),
            city: "Springfield".into(),
        }),
        OrderEvent::LineAdded("sku-9".into(), 2),
        OrderEvent::Cancelled,
        OrderEvent::Refunded {
            amount_cents: 100,
            reason: "damaged".into(),
        },
        OrderEvent::NoteAdded {
            note: "leave at door".into(),
            pinned: true,
        },
    ]
}

#[test]
fn every_variant_gets_a_stable_type_name() {
    assert_eq!(
        OrderEvent::event_types(),
        &[
            "shop.order.placed",
            "shop.order.shipped",
            "shop.order.line_added",
            "shop.order.cancelled",
            "shop.order.refund-issued",
            "shop.order.note_added",
        ]
    );
    let names: Vec<&str> = samples().iter().map(DomainEvent::event_type).collect();
    assert_eq!(names, OrderEvent::event_types());
    for name in OrderEvent::event_types() {
        eventflow::validate_event_type(name).unwrap();
    }
}

#[test]
fn versions_default_to_one_and_can_be_declared() {
    assert_eq!(OrderEvent::schema_version("shop.order.placed"), 1);
    assert_eq!(OrderEvent::schema_version("shop.order.refund-issued"), 3);
    let envelope = Event::from_domain(&samples()[4]).unwrap();
    assert_eq!(envelope.version, 3);
}

#[test]
fn payloads_hold_only_the_variant_content() {
    let payloads: Vec<Value> = samples().iter().map(|e| e.to_payload().unwrap()).collect();
    assert_eq!(
        payloads[0],
        json!({ "order_id": "o-1", "total_cents": 4200 })
    );
    assert_eq!(
        payloads[1],
        json!({ "street": "Main St 1", "city": "Springfield" })
    );
    assert_eq!(payloads[2], json!(["sku-9", 2]));
    assert_eq!(payloads[3], json!({}));
    assert_eq!(
        payloads[5],
        json!({ "text": "leave at door", "pinned": true })
    );
}

#[test]
fn every_variant_round_trips_through_the_envelope_and_json() {
    for event in samples() {
        let envelope = Event::from_domain(&event).unwrap();
        let wire = Event::from_json(&envelope.to_json().unwrap()).unwrap();
        assert_eq!(wire.decode::<OrderEvent>().unwrap(), event);
    }
}

#[test]
fn serde_field_defaults_apply_when_decoding() {
    let envelope = Event::new("shop.order.note_added", json!({ "text": "hi" })).unwrap();
    assert_eq!(
        envelope.decode::<OrderEvent>().unwrap(),
        OrderEvent::NoteAdded {
            note: "hi".into(),
            pinned: false
        }
    );
}

#[test]
fn unknown_type_is_a_typed_error() {
    let envelope = Event::new("shop.order.teleported", json!({})).unwrap();
    match envelope.decode::<OrderEvent>() {
        Err(Error::UnknownEventType { event_type, target }) => {
            assert_eq!(event_type, "shop.order.teleported");
            assert_eq!(target, "OrderEvent");
        }
        other => panic!("expected UnknownEventType, got {other:?}"),
    }
}

#[test]
fn bad_payload_is_a_typed_error_naming_the_type() {
    let envelope = Event::new("shop.order.placed", json!({ "order_id": 7 })).unwrap();
    match envelope.decode::<OrderEvent>() {
        Err(Error::Decode { event_type, .. }) => assert_eq!(event_type, "shop.order.placed"),
        other => panic!("expected Decode, got {other:?}"),
    }
    let envelope = Event::new("shop.order.line_added", json!({ "sku": "x" })).unwrap();
    assert!(matches!(
        envelope.decode::<OrderEvent>(),
        Err(Error::Decode { .. })
    ));
}

#[test]
fn declared_upcasters_chain_from_old_versions() {
    let v1 = Event::new("shop.order.refund-issued", json!({ "amount": 3 }))
        .unwrap()
        .with_version(1);
    assert_eq!(
        v1.decode::<OrderEvent>().unwrap(),
        OrderEvent::Refunded {
            amount_cents: 300,
            reason: "unknown".into()
        }
    );
    let v2 = Event::new(
        "shop.order.refund-issued",
        json!({ "amount_cents": 5, "x": 1 }),
    )
    .unwrap()
    .with_version(2);
    assert_eq!(
        v2.decode::<OrderEvent>().unwrap(),
        OrderEvent::Refunded {
            amount_cents: 5,
            reason: "unknown".into()
        }
    );
}

#[test]
fn an_old_version_without_upcaster_is_a_typed_error() {
    let old = Event::new(
        "shop.order.placed",
        json!({ "order_id": "o", "total_cents": 1 }),
    )
    .unwrap()
    .with_version(2);
    match old.decode::<OrderEvent>() {
        Err(Error::MissingUpcaster {
            event_type,
            version,
            current,
        }) => {
            assert_eq!(event_type, "shop.order.placed");
            assert_eq!((version, current), (2, 1));
        }
        other => panic!("expected MissingUpcaster, got {other:?}"),
    }
}

#[test]
fn aggregate_derive_wires_apply_to_the_handlers() {
    assert_eq!(Order::TYPE, "order");
    assert_eq!(Order::stream_id("42"), "order-42");
    assert_eq!(<Order as SnapshotState>::STATE_VERSION, 2);
    assert_eq!(<Order as SnapshotState>::SNAPSHOT_EVERY, 10);
    let mut order = Order::default();
    for event in samples() {
        order.apply(event);
    }
    assert!(order.placed && order.cancelled);
    assert_eq!(order.total_cents, 4200);
    assert_eq!(order.lines, vec![("sku-9".to_owned(), 2)]);
    assert_eq!(order.city.as_deref(), Some("Springfield"));
    assert_eq!(order.refunded_cents, 100);
    assert_eq!(order.notes, vec!["leave at door".to_owned()]);
}

// Defaults: prefix from the enum name without `Event`, aggregate name from the struct name,
// a custom handler trait and method name, a keyword variant.
#[derive(Debug, PartialEq, Serialize, Deserialize, eventflow::DomainEvent)]
#[event(handler_trait = HandleBankAccount)]
pub enum BankAccountEvent {
    Opened,
    #[event(handler = on_moved)]
    Move {
        to: String,
    },
    Type,
}

#[derive(Default, eventflow::Aggregate)]
#[aggregate(event = BankAccountEvent)]
pub struct BankAccount {
    log: Vec<String>,
}

impl HandleBankAccount for BankAccount {
    fn opened(&mut self) {
        self.log.push("opened".into());
    }
    fn on_moved(&mut self, to: String) {
        self.log.push(to);
    }
    fn r#type(&mut self) {
        self.log.push("type".into());
    }
}

#[test]
fn defaults_and_overrides() {
    assert_eq!(
        BankAccountEvent::event_types(),
        &[
            "bank_account.opened",
            "bank_account.move",
            "bank_account.type"
        ]
    );
    assert_eq!(BankAccount::TYPE, "bank_account");
    let mut account = BankAccount::default();
    account.apply(BankAccountEvent::Opened);
    account.apply(BankAccountEvent::Move { to: "x".into() });
    account.apply(BankAccountEvent::Type);
    assert_eq!(account.log, ["opened", "x", "type"]);
}

// Enum-level serde options that shape payloads apply to decoding too.
#[derive(Debug, PartialEq, Serialize, Deserialize, eventflow::DomainEvent)]
#[serde(rename_all_fields = "camelCase", deny_unknown_fields)]
#[event(prefix = "user")]
pub enum UserEvent {
    Registered {
        user_name: String,
        #[serde(default = "default_plan")]
        plan_name: String,
    },
}

fn default_plan() -> String {
    "free".into()
}

#[test]
fn enum_level_serde_options_apply_to_payloads() {
    let event = UserEvent::Registered {
        user_name: "ada".into(),
        plan_name: "pro".into(),
    };
    assert_eq!(
        event.to_payload().unwrap(),
        json!({ "userName": "ada", "planName": "pro" })
    );
    let envelope = Event::new("user.registered", json!({ "userName": "bob" })).unwrap();
    assert_eq!(
        envelope.decode::<UserEvent>().unwrap(),
        UserEvent::Registered {
            user_name: "bob".into(),
            plan_name: "free".into()
        }
    );
    let extra = Event::new("user.registered", json!({ "userName": "bob", "x": 1 })).unwrap();
    assert!(matches!(
        extra.decode::<UserEvent>(),
        Err(Error::Decode { .. })
    ));
}

#[test]
fn fused_apply_envelope_matches_decode_then_apply() {
    let mut fused = Order::default();
    let mut two_step = Order::default();
    let mut envelopes: Vec<Event> = samples()
        .iter()
        .map(|e| Event::from_domain(e).unwrap())
        .collect();
    envelopes.push(
        Event::new("shop.order.refund-issued", json!({ "amount": 2 }))
            .unwrap()
            .with_version(1),
    );
    for envelope in &envelopes {
        fused.apply_envelope(envelope).unwrap();
        two_step.apply(envelope.decode::<OrderEvent>().unwrap());
    }
    assert_eq!(fused, two_step);
    assert_eq!(fused.refunded_cents, 300);

    let unknown = Event::new("shop.order.teleported", json!({})).unwrap();
    assert!(matches!(
        fused.apply_envelope(&unknown),
        Err(Error::UnknownEventType { .. })
    ));
    let bad = Event::new("shop.order.line_added", json!({})).unwrap();
    assert!(matches!(
        fused.apply_envelope(&bad),
        Err(Error::Decode { .. })
    ));
    let old_unit = Event::new("shop.order.cancelled", json!({}))
        .unwrap()
        .with_version(0);
    assert!(matches!(
        fused.apply_envelope(&old_unit),
        Err(Error::MissingUpcaster { version: 0, .. })
    ));
}

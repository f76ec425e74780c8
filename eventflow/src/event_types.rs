//! The standard event types, with the names and values of the Go `events` package.
//!
//! | group | constant | value |
//! |---|---|---|
//! | user | [`USER_CREATED`] | `user.created` |
//! | user | [`USER_UPDATED`] | `user.updated` |
//! | user | [`USER_DELETED`] | `user.deleted` |
//! | user | [`USER_AUTHENTICATED`] | `user.authenticated` |
//! | emissions | [`EMISSIONS_CALCULATED`] | `emissions.calculated` |
//! | emissions | [`EMISSIONS_UPDATED`] | `emissions.updated` |
//! | emissions | [`FACTOR_UPDATED`] | `factor.updated` |
//! | ingestion | [`DATA_INGESTED`] | `data.ingested` |
//! | ingestion | [`INGESTION_ERROR`] | `ingestion.error` |
//! | compliance | [`REPORT_GENERATED`] | `report.generated` |
//! | compliance | [`REPORT_SUBMITTED`] | `report.submitted` |
//! | billing | [`SUBSCRIPTION_CREATED`] | `subscription.created` |
//! | billing | [`SUBSCRIPTION_UPDATED`] | `subscription.updated` |
//! | billing | [`PAYMENT_RECEIVED`] | `payment.received` |
//! | billing | [`PAYMENT_FAILED`] | `payment.failed` |
//! | system | [`MODE_CHANGED`] | `mode.changed` |
//! | system | [`HEALTH_CHECK_ERROR`] | `health_check.error` |
//! | system | [`SYSTEM_ERROR`] | `system.error` (what [`publish_error`](crate::bus::publish_error) publishes) |

/// A user was created.
pub const USER_CREATED: &str = "user.created";
/// A user was updated.
pub const USER_UPDATED: &str = "user.updated";
/// A user was deleted.
pub const USER_DELETED: &str = "user.deleted";
/// A user authenticated.
pub const USER_AUTHENTICATED: &str = "user.authenticated";
/// Emissions were calculated.
pub const EMISSIONS_CALCULATED: &str = "emissions.calculated";
/// Emissions were updated.
pub const EMISSIONS_UPDATED: &str = "emissions.updated";
/// An emission factor was updated.
pub const FACTOR_UPDATED: &str = "factor.updated";
/// Data was ingested.
pub const DATA_INGESTED: &str = "data.ingested";
/// Ingestion failed.
pub const INGESTION_ERROR: &str = "ingestion.error";
/// A compliance report was generated.
pub const REPORT_GENERATED: &str = "report.generated";
/// A compliance report was submitted.
pub const REPORT_SUBMITTED: &str = "report.submitted";
/// A billing subscription was created.
pub const SUBSCRIPTION_CREATED: &str = "subscription.created";
/// A billing subscription was updated.
pub const SUBSCRIPTION_UPDATED: &str = "subscription.updated";
/// A payment was received.
pub const PAYMENT_RECEIVED: &str = "payment.received";
/// A payment failed.
pub const PAYMENT_FAILED: &str = "payment.failed";
/// The system's operating mode changed.
pub const MODE_CHANGED: &str = "mode.changed";
/// A health check failed.
pub const HEALTH_CHECK_ERROR: &str = "health_check.error";
/// An error reported with [`publish_error`](crate::bus::publish_error).
pub const SYSTEM_ERROR: &str = "system.error";

/// Every standard event type, in the order of the table above.
pub const ALL: &[&str] = &[
    USER_CREATED,
    USER_UPDATED,
    USER_DELETED,
    USER_AUTHENTICATED,
    EMISSIONS_CALCULATED,
    EMISSIONS_UPDATED,
    FACTOR_UPDATED,
    DATA_INGESTED,
    INGESTION_ERROR,
    REPORT_GENERATED,
    REPORT_SUBMITTED,
    SUBSCRIPTION_CREATED,
    SUBSCRIPTION_UPDATED,
    PAYMENT_RECEIVED,
    PAYMENT_FAILED,
    MODE_CHANGED,
    HEALTH_CHECK_ERROR,
    SYSTEM_ERROR,
];

#[cfg(test)]
mod tests {
    #[test]
    fn every_standard_type_is_valid_and_unique() {
        let mut seen = std::collections::HashSet::new();
        for name in super::ALL {
            crate::event::validate_event_type(name).unwrap();
            assert!(seen.insert(name), "{name} listed twice");
        }
    }
}

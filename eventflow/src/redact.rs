//! Credential redaction for URLs that end up in errors, logs and `Debug` output.
//!
//! Reachable crate-wide (`crate::redact::redact_url`) for the NATS, Redis and PostgreSQL
//! backends.

// With `postgres` alone nothing calls it until the PostgreSQL store's errors adopt it.
#![cfg_attr(not(any(feature = "nats", feature = "redis")), allow(dead_code))]

use url::Url;

/// What replaces a secret.
pub(crate) const REDACTED: &str = "<redacted>";

/// `url` with its user name and password (or a token in the userinfo) replaced by
/// `<redacted>`; every other part is kept, so the host and port stay readable.
///
/// Several URLs separated by commas (a NATS server list) are redacted one by one. A string
/// that does not parse as a URL (`host:6379`, `user:pass@host`) has everything before its last
/// `@` redacted, so a secret never survives a parse failure.
pub(crate) fn redact_url(url: &str) -> String {
    if url.contains(',') {
        return url
            .split(',')
            .map(|u| redact_one(u.trim()))
            .collect::<Vec<_>>()
            .join(",");
    }
    redact_one(url)
}

fn redact_one(raw: &str) -> String {
    match Url::parse(raw) {
        Ok(mut url) if url.has_host() => {
            if url.username().is_empty() && url.password().is_none() {
                return raw.to_owned();
            }
            // Setting userinfo only fails for URLs without a host, excluded above.
            let _ = url.set_username(REDACTED);
            let _ = url.set_password(None);
            // `set_username` percent-encodes `<` and `>`; show the marker as written.
            url.as_str().replacen("%3Credacted%3E", REDACTED, 1)
        }
        // No scheme (`user:pass@host:6379`), or not a URL at all.
        _ => match raw.rfind('@') {
            Some(at) => match raw.find("://") {
                Some(scheme) if scheme < at => {
                    format!("{}://{REDACTED}@{}", &raw[..scheme], &raw[at + 1..])
                }
                _ => format!("{REDACTED}@{}", &raw[at + 1..]),
            },
            None => raw.to_owned(),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hides_user_password_and_token() {
        assert_eq!(
            redact_url("redis://user:secret@host:6379/0"),
            "redis://<redacted>@host:6379/0"
        );
        assert_eq!(
            redact_url("nats://secret@host:4222"),
            "nats://<redacted>@host:4222"
        );
        assert_eq!(
            redact_url("rediss://:secret@host:6380"),
            "rediss://<redacted>@host:6380"
        );
        assert_eq!(
            redact_url("postgres://admin:s%40cret@db.example.com:5432/app?sslmode=require"),
            "postgres://<redacted>@db.example.com:5432/app?sslmode=require"
        );
    }

    #[test]
    fn keeps_urls_without_credentials() {
        assert_eq!(redact_url("redis://host:6379"), "redis://host:6379");
        assert_eq!(redact_url("nats://127.0.0.1:4222"), "nats://127.0.0.1:4222");
        assert_eq!(redact_url("host:6379"), "host:6379");
    }

    #[test]
    fn redacts_lists_and_unparsable_strings() {
        assert_eq!(
            redact_url("nats://a:secret@one:4222, nats://two:4222"),
            "nats://<redacted>@one:4222,nats://two:4222"
        );
        assert_eq!(redact_url("user:secret@host:6379"), "<redacted>@host:6379");
        assert_eq!(
            redact_url("weird://us er:secret@@host"),
            "weird://<redacted>@host"
        );
        for u in [
            "nats://x:secret@h",
            "secret@h",
            "a://b:secret@",
            "::secret@h",
        ] {
            assert!(
                !redact_url(u).contains("secret"),
                "{u} -> {}",
                redact_url(u)
            );
        }
    }
}

/// Every config and every error that can hold a secret prints none of it, in `Debug` or in
/// `Display` (through the whole source chain).
#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod no_secrets_leak {
    use std::time::Duration;

    /// Everything `value` prints, including each cause of an error.
    fn printed_error(e: &(dyn std::error::Error + 'static)) -> String {
        let mut out = format!("{e} {e:?}");
        let mut cause = e.source();
        while let Some(c) = cause {
            out.push_str(&format!(" | {c} {c:?}"));
            cause = c.source();
        }
        out
    }

    fn assert_clean(what: &str, printed: &str) {
        assert!(
            !printed.contains("secret"),
            "{what} leaks a secret: {printed}"
        );
    }

    #[cfg(feature = "nats")]
    #[tokio::test]
    async fn nats_config_and_errors() {
        use crate::bus::nats::{NatsBus, NatsConfig};

        let mut config =
            NatsConfig::new("nats://user:secret@127.0.0.1:1,nats://secret-token@127.0.0.1:2");
        config.token = Some("secret".into());
        config.user = Some("user".into());
        config.password = Some("secret".into());
        config.connect_timeout = Duration::from_millis(300);
        config.max_reconnects = Some(0);
        assert_clean("NatsConfig Debug", &format!("{config:?} {config:#?}"));
        assert_clean("NatsConfig::redacted_url", &config.redacted_url());
        assert!(format!("{config:?}").contains("<redacted>"));

        let error = NatsBus::connect(config).await.unwrap_err();
        assert!(matches!(error, crate::Error::Connect { .. }), "{error:?}");
        assert_clean("nats connect error", &printed_error(&error));
    }

    #[cfg(feature = "redis")]
    #[tokio::test]
    async fn redis_config_and_errors() {
        use crate::bus::redis::{RedisBus, RedisConfig};

        let mut config = RedisConfig::new("redis://user:secret@127.0.0.1:1/0");
        config.addrs.push("rediss://:secret@127.0.0.1:2".into());
        config.addrs.push("user:secret@127.0.0.1:3".into());
        config.username = Some("user".into());
        config.password = Some("secret".into());
        config.connect_timeout = Duration::from_millis(300);
        assert_clean("RedisConfig Debug", &format!("{config:?} {config:#?}"));
        assert!(format!("{config:?}").contains("<redacted>"));

        let error = RedisBus::connect(config).await.unwrap_err();
        assert!(matches!(error, crate::Error::Connect { .. }), "{error:?}");
        assert_clean("redis connect error", &printed_error(&error));
    }

    #[cfg(feature = "postgres")]
    #[tokio::test]
    async fn postgres_store_and_errors() {
        use crate::postgres::{PgPoolOptions, PostgresEventStore};

        let error =
            PostgresEventStore::connect("postgres://app:secret@127.0.0.1:1/app?sslmode=bogus")
                .await
                .unwrap_err();
        assert_clean("postgres URL error", &printed_error(&error));

        // Nothing listens on port 1: the error of a call must name the server, not the password.
        let pool = PgPoolOptions::new()
            .acquire_timeout(Duration::from_millis(300))
            .connect_lazy("postgres://app:secret@127.0.0.1:1/app")
            .unwrap_or_else(|e| panic!("lazy pool: {e}"));
        let store = PostgresEventStore::new(pool);
        assert_clean("PostgresEventStore Debug", &format!("{store:?} {store:#?}"));
        let error = crate::EventStore::head_position(&store).await.unwrap_err();
        assert!(matches!(error, crate::Error::Connect { .. }), "{error:?}");
        assert_clean("postgres call error", &printed_error(&error));
    }

    #[test]
    fn redacted_urls() {
        for url in [
            "redis://user:secret@h:6379",
            "nats://secret@h:4222",
            "postgres://app:secret@db/app",
            "user:secret@h:1",
        ] {
            assert_clean(url, &super::redact_url(url));
        }
    }
}

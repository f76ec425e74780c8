//! Credential redaction for URLs that end up in errors, logs and `Debug` output.

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

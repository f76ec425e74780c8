//! The rules. Each failure is a `syn::Error` spanned on the offending token; all failures of one
//! input are reported together.

use std::collections::HashMap;

use proc_macro2::{TokenStream, TokenTree};
use syn::{Attribute, Data, DataEnum, DeriveInput, Error, Result};

use crate::ast::{AggregateInput, EventEnum};

/// Longest event type name, in bytes (`eventflow::event::MAX_EVENT_TYPE_LEN`).
const MAX_EVENT_TYPE_LEN: usize = 255;

/// Why `name` is not a valid event type, by the rules of `eventflow::validate_event_type`
/// (duplicated here because the proc-macro crate cannot depend on eventflow; keep in sync).
pub(crate) fn event_type_error(name: &str) -> Option<&'static str> {
    if name.is_empty() {
        Some("must not be empty")
    } else if name.len() > MAX_EVENT_TYPE_LEN {
        Some("longer than 255 bytes")
    } else if name.starts_with('.') || name.ends_with('.') {
        Some("must not start or end with a dot")
    } else if name.contains("..") {
        Some("must not contain an empty token (double dot)")
    } else if name.contains(['*', '>']) {
        Some("wildcards `*` and `>` are only allowed in subscription patterns")
    } else if name.chars().any(char::is_whitespace) {
        Some("must not contain whitespace")
    } else if !name.bytes().all(|b| {
        b == b'.' || b == b'_' || b == b'-' || b.is_ascii_lowercase() || b.is_ascii_digit()
    }) {
        Some("tokens may only hold lower-case ASCII letters, digits, `_` and `-`")
    } else {
        None
    }
}

/// Collects errors so that one run reports every broken rule.
#[derive(Default)]
struct Errors(Option<Error>);

impl Errors {
    fn push(&mut self, error: Error) {
        match &mut self.0 {
            Some(e) => e.combine(error),
            None => self.0 = Some(error),
        }
    }
    fn finish(self) -> Result<()> {
        self.0.map_or(Ok(()), Err)
    }
}

/// `DomainEvent` needs an enum: a struct or union is an error on its keyword.
pub(crate) fn event_shape(input: &DeriveInput) -> Result<&DataEnum> {
    match &input.data {
        Data::Enum(data) => Ok(data),
        Data::Struct(s) => Err(Error::new_spanned(
            s.struct_token,
            "DomainEvent can only be derived for an enum (one variant per event type); \
             wrap this struct in an enum variant",
        )),
        Data::Union(u) => Err(Error::new_spanned(
            u.union_token,
            "DomainEvent can only be derived for an enum (one variant per event type), not a union",
        )),
    }
}

pub(crate) fn event_enum(e: &EventEnum<'_>) -> Result<()> {
    let mut errors = Errors::default();
    let input = e.input;

    if !input.generics.params.is_empty() {
        errors.push(Error::new_spanned(
            &input.generics,
            "DomainEvent enums cannot be generic: each event type needs one stable payload shape",
        ));
    }
    if e.variants.is_empty() {
        errors.push(Error::new_spanned(
            &input.ident,
            "DomainEvent needs at least one variant (one per event type)",
        ));
    }
    serde_representation(&input.attrs, &mut errors, false);

    match &e.attrs.prefix {
        Some(lit) => {
            if let Some(reason) = event_type_error(&e.prefix) {
                errors.push(Error::new_spanned(
                    lit,
                    format!("invalid event type prefix {:?}: {reason}", e.prefix),
                ));
            }
        }
        None => {
            if event_type_error(&e.prefix).is_some() {
                errors.push(Error::new_spanned(
                    &input.ident,
                    format!(
                        "the default prefix {:?} is not a valid event type; \
                         set one with #[event(prefix = \"...\")]",
                        e.prefix
                    ),
                ));
            }
        }
    }

    let mut names: HashMap<&str, &syn::Ident> = HashMap::new();
    let mut handlers: HashMap<String, &syn::Ident> = HashMap::new();
    for v in &e.variants {
        serde_representation(&v.original.attrs, &mut errors, true);
        // The token that carries the name: the override literal, else the variant itself.
        let name_token: &dyn quote::ToTokens = match &v.attrs.name {
            Some(lit) => lit,
            None => v.ident(),
        };
        if let Some(reason) = event_type_error(&v.name) {
            errors.push(Error::new_spanned(
                name_token,
                format!("invalid event type name {:?}: {reason}", v.name),
            ));
        }
        if let Some(first) = names.insert(&v.name, v.ident()) {
            errors.push(Error::new_spanned(
                name_token,
                format!(
                    "duplicate event type name {:?}: variant `{first}` already uses it; \
                     give one of them #[event(name = \"...\")]",
                    v.name
                ),
            ));
        }
        if let Some(version) = &v.attrs.version
            && version.value == 0
        {
            errors.push(Error::new_spanned(
                &version.lit,
                "schema versions start at 1",
            ));
        }
        let mut seen = Vec::new();
        for up in &v.attrs.upcasts {
            if up.from == 0 || up.from >= v.version {
                errors.push(Error::new_spanned(
                    &up.key,
                    format!(
                        "an upcaster upgrades an older version to the next one: `v{}` must be \
                         between v1 and v{} (the current version is {})",
                        up.from,
                        v.version.saturating_sub(1),
                        v.version
                    ),
                ));
            } else if seen.contains(&up.from) {
                errors.push(Error::new_spanned(
                    &up.key,
                    format!("duplicate upcaster for version {}", up.from),
                ));
            }
            seen.push(up.from);
        }
        let handler = v.handler.to_string();
        let handler_token: &dyn quote::ToTokens = match &v.attrs.handler {
            Some(h) => h,
            None => v.ident(),
        };
        if matches!(handler.as_str(), "self" | "super" | "crate") {
            errors.push(Error::new_spanned(
                handler_token,
                format!(
                    "`{handler}` cannot name a handler method; set one with \
                     #[event(handler = ...)]"
                ),
            ));
        }
        if let Some(first) = handlers.insert(handler.clone(), v.ident()) {
            errors.push(Error::new_spanned(
                handler_token,
                format!(
                    "handler method `{handler}` is already used by variant `{first}`; \
                     set another with #[event(handler = ...)]"
                ),
            ));
        }
    }
    errors.finish()
}

/// The payload conversion relies on serde's default, externally tagged enum form and on serde's
/// variant indices matching the declaration order, so representation changes and skipped
/// variants are errors on the serde key that asks for them.
fn serde_representation(attrs: &[Attribute], errors: &mut Errors, variant: bool) {
    let forbidden: &[&str] = if variant {
        &[
            "skip",
            "skip_deserializing",
            "skip_serializing",
            "other",
            "untagged",
        ]
    } else {
        &["tag", "content", "untagged"]
    };
    for attr in attrs.iter().filter(|a| a.path().is_ident("serde")) {
        let Ok(list) = attr.meta.require_list() else {
            continue;
        };
        for key in top_level_idents(list.tokens.clone()) {
            if forbidden.contains(&key.to_string().as_str()) {
                errors.push(Error::new(
                    key.span(),
                    if variant {
                        format!(
                            "`#[serde({key})]` is not supported on a DomainEvent variant: every \
                             variant is an event type that must encode and decode"
                        )
                    } else {
                        format!(
                            "`#[serde({key})]` is not supported on a DomainEvent enum: the event \
                             type lives in the envelope, so the enum keeps serde's default \
                             (externally tagged) form"
                        )
                    },
                ));
            }
        }
    }
}

/// Identifiers at the top level of an attribute's token list (keys, not values in strings).
fn top_level_idents(tokens: TokenStream) -> Vec<proc_macro2::Ident> {
    let mut out = Vec::new();
    let mut expect_key = true;
    for tt in tokens {
        match tt {
            TokenTree::Ident(id) if expect_key => {
                out.push(id);
                expect_key = false;
            }
            TokenTree::Punct(p) if p.as_char() == ',' => expect_key = true,
            _ => expect_key = false,
        }
    }
    out
}

pub(crate) fn aggregate(a: &AggregateInput<'_>) -> Result<()> {
    let mut errors = Errors::default();
    let input = a.input;
    if let Data::Union(u) = &input.data {
        errors.push(Error::new_spanned(
            u.union_token,
            "Aggregate cannot be derived for a union; use a struct",
        ));
    }
    if a.attrs.event.is_none() {
        errors.push(Error::new(
            input.ident.span(),
            "missing the event enum: add #[aggregate(event = YourEvent)]",
        ));
    }
    if let Some(reason) = event_type_error(&a.name) {
        let token: &dyn quote::ToTokens = match &a.attrs.name {
            Some(lit) => lit,
            None => &input.ident,
        };
        errors.push(Error::new_spanned(
            token,
            format!(
                "invalid aggregate type name {:?} (it prefixes stream ids): {reason}",
                a.name
            ),
        ));
    }
    if let Some(n) = &a.attrs.snapshot_every
        && n.value == 0
    {
        errors.push(Error::new_spanned(
            &n.lit,
            "snapshot_every must be at least 1",
        ));
    }
    if let Some(n) = &a.attrs.state_version
        && n.value == 0
    {
        errors.push(Error::new_spanned(&n.lit, "state versions start at 1"));
    }
    errors.finish()
}

#[cfg(test)]
mod tests {
    use super::event_type_error;

    /// The compile-time check must agree with `eventflow::validate_event_type`, which it copies.
    #[test]
    fn event_type_rules_match_eventflow() {
        let long = "a".repeat(256);
        let max = "a".repeat(255);
        let names = [
            "order.placed",
            "order.line_added",
            "order.refund-issued",
            "v2.x9",
            "a",
            "",
            ".order",
            "order.",
            "order..placed",
            "order.*",
            "order.>",
            "Order.placed",
            "order placed",
            "order\tplaced",
            "order\u{7}placed",
            "ordér.placed",
            "order/placed",
            long.as_str(),
            max.as_str(),
        ];
        for name in names {
            assert_eq!(
                event_type_error(name).is_none(),
                eventflow::validate_event_type(name).is_ok(),
                "rules disagree on {name:?}"
            );
        }
    }
}

//! Parsing of the `#[event(..)]` and `#[aggregate(..)]` attributes. Only syntax is checked
//! here; the rules (valid names, versions from 1, no duplicates) live in `valid.rs`.

use proc_macro2::Span;
use syn::meta::ParseNestedMeta;
use syn::{Attribute, Ident, Lit, LitInt, LitStr, Path, Result, Type};

/// `#[event(..)]` on the enum.
#[derive(Default)]
pub(crate) struct EnumAttrs {
    /// `prefix = "account"`.
    pub prefix: Option<LitStr>,
    /// `handler_trait = ApplyAccount`.
    pub handler_trait: Option<Ident>,
}

/// `#[event(..)]` on a variant.
#[derive(Default)]
pub(crate) struct VariantAttrs {
    /// `name = "account.opened"`.
    pub name: Option<LitStr>,
    /// `version = 2`.
    pub version: Option<Number<u32>>,
    /// `upcast(v1 = path::to::fn, ..)`.
    pub upcasts: Vec<Upcast>,
    /// `handler = on_opened`.
    pub handler: Option<Ident>,
}

/// An integer literal and its value.
pub(crate) struct Number<T> {
    pub value: T,
    pub lit: LitInt,
}

/// `v1 = path::to::fn` inside `upcast(..)`.
pub(crate) struct Upcast {
    /// The version it upgrades from.
    pub from: u32,
    /// The `v1` key, for spans.
    pub key: Ident,
    /// The function.
    pub func: Path,
}

/// `#[aggregate(..)]` on the aggregate.
#[derive(Default)]
pub(crate) struct AggregateAttrs {
    /// `name = "account"`.
    pub name: Option<LitStr>,
    /// `event = AccountEvent`.
    pub event: Option<Type>,
    /// `snapshot` (bare flag).
    pub snapshot: Option<Span>,
    /// `snapshot_every = 100`.
    pub snapshot_every: Option<Number<u64>>,
    /// `state_version = 2`.
    pub state_version: Option<Number<u32>>,
}

const ENUM_KEYS: &str = "`prefix`, `handler_trait`";
const VARIANT_KEYS: &str = "`name`, `version`, `upcast`, `handler`";
const AGGREGATE_KEYS: &str = "`name`, `event`, `snapshot`, `snapshot_every`, `state_version`";

fn duplicate(meta: &ParseNestedMeta<'_>) -> syn::Error {
    meta.error(format!(
        "duplicate key `{}`",
        meta.path
            .get_ident()
            .map_or_else(String::new, ToString::to_string)
    ))
}

fn set<T>(slot: &mut Option<T>, meta: &ParseNestedMeta<'_>, value: T) -> Result<()> {
    if slot.is_some() {
        return Err(duplicate(meta));
    }
    *slot = Some(value);
    Ok(())
}

/// Parses `key = <integer literal>`; any other literal is an error on that literal.
fn number<T>(meta: &ParseNestedMeta<'_>, key: &str) -> Result<Number<T>>
where
    T: std::str::FromStr,
    T::Err: std::fmt::Display,
{
    let lit: Lit = meta.value()?.parse()?;
    match lit {
        Lit::Int(lit) => Ok(Number {
            value: lit.base10_parse()?,
            lit,
        }),
        other => Err(syn::Error::new_spanned(
            other,
            format!("expected an integer literal for `{key}`, like `{key} = 2`"),
        )),
    }
}

/// Parses a string literal; another literal is an error on it.
fn string(meta: &ParseNestedMeta<'_>, key: &str) -> Result<LitStr> {
    let lit: Lit = meta.value()?.parse()?;
    match lit {
        Lit::Str(s) => Ok(s),
        other => Err(syn::Error::new_spanned(
            other,
            format!("expected a string literal for `{key}`, like `{key} = \"account\"`"),
        )),
    }
}

fn unknown(meta: &ParseNestedMeta<'_>, attr: &str, expected: &str) -> syn::Error {
    let key = meta
        .path
        .get_ident()
        .map_or_else(|| "?".to_owned(), ToString::to_string);
    meta.error(format!(
        "unknown key `{key}` in #[{attr}(..)]; expected one of {expected}"
    ))
}

pub(crate) fn enum_attrs(attrs: &[Attribute]) -> Result<EnumAttrs> {
    let mut out = EnumAttrs::default();
    for attr in attrs.iter().filter(|a| a.path().is_ident("event")) {
        attr.parse_nested_meta(|meta| {
            if meta.path.is_ident("prefix") {
                let v = string(&meta, "prefix")?;
                set(&mut out.prefix, &meta, v)
            } else if meta.path.is_ident("handler_trait") {
                let v: Ident = meta.value()?.parse()?;
                set(&mut out.handler_trait, &meta, v)
            } else {
                Err(unknown(&meta, "event", ENUM_KEYS))
            }
        })?;
    }
    Ok(out)
}

pub(crate) fn variant_attrs(attrs: &[Attribute]) -> Result<VariantAttrs> {
    let mut out = VariantAttrs::default();
    for attr in attrs.iter().filter(|a| a.path().is_ident("event")) {
        attr.parse_nested_meta(|meta| {
            if meta.path.is_ident("name") {
                let v = string(&meta, "name")?;
                set(&mut out.name, &meta, v)
            } else if meta.path.is_ident("version") {
                let v = number(&meta, "version")?;
                set(&mut out.version, &meta, v)
            } else if meta.path.is_ident("handler") {
                let v: Ident = meta.value()?.parse()?;
                set(&mut out.handler, &meta, v)
            } else if meta.path.is_ident("upcast") {
                meta.parse_nested_meta(|inner| {
                    let key = inner.path.require_ident()?.clone();
                    let from = key
                        .to_string()
                        .strip_prefix('v')
                        .and_then(|n| n.parse::<u32>().ok())
                        .ok_or_else(|| {
                            syn::Error::new_spanned(
                                &key,
                                "expected a version key like `v1` in `upcast(v1 = path::to::fn)`",
                            )
                        })?;
                    let func: Path = inner.value()?.parse()?;
                    out.upcasts.push(Upcast { from, key, func });
                    Ok(())
                })
            } else {
                Err(unknown(&meta, "event", VARIANT_KEYS))
            }
        })?;
    }
    Ok(out)
}

pub(crate) fn aggregate_attrs(attrs: &[Attribute]) -> Result<AggregateAttrs> {
    let mut out = AggregateAttrs::default();
    for attr in attrs.iter().filter(|a| a.path().is_ident("aggregate")) {
        attr.parse_nested_meta(|meta| {
            if meta.path.is_ident("name") {
                let v = string(&meta, "name")?;
                set(&mut out.name, &meta, v)
            } else if meta.path.is_ident("event") {
                let v: Type = meta.value()?.parse()?;
                set(&mut out.event, &meta, v)
            } else if meta.path.is_ident("snapshot") {
                let span = meta.path.require_ident()?.span();
                set(&mut out.snapshot, &meta, span)
            } else if meta.path.is_ident("snapshot_every") {
                let v = number(&meta, "snapshot_every")?;
                set(&mut out.snapshot_every, &meta, v)
            } else if meta.path.is_ident("state_version") {
                let v = number(&meta, "state_version")?;
                set(&mut out.state_version, &meta, v)
            } else {
                Err(unknown(&meta, "aggregate", AGGREGATE_KEYS))
            }
        })?;
    }
    Ok(out)
}

/// The enum-level `#[serde(..)]` options that shape the payload of struct variants, and so
/// must also apply to the generated payload decoders.
#[derive(Default)]
pub(crate) struct SerdeEnumOptions {
    /// `rename_all_fields = ".."` (becomes `rename_all` on each payload).
    pub rename_all_fields: Option<LitStr>,
    /// `deny_unknown_fields`.
    pub deny_unknown_fields: bool,
}

/// Reads [`SerdeEnumOptions`] from the enum's serde attributes. Anything else in them is serde's
/// business: it is skipped, never an error here.
pub(crate) fn serde_enum_options(attrs: &[Attribute]) -> SerdeEnumOptions {
    let mut out = SerdeEnumOptions::default();
    for attr in attrs.iter().filter(|a| a.path().is_ident("serde")) {
        let _ = attr.parse_nested_meta(|meta| {
            if meta.path.is_ident("rename_all_fields") {
                out.rename_all_fields = Some(meta.value()?.parse()?);
            } else if meta.path.is_ident("deny_unknown_fields") {
                out.deny_unknown_fields = true;
            } else if meta.input.peek(syn::Token![=]) {
                meta.value()?.parse::<syn::Expr>()?;
            } else if meta.input.peek(syn::token::Paren) {
                meta.parse_nested_meta(|inner| {
                    if inner.input.peek(syn::Token![=]) {
                        inner.value()?.parse::<syn::Expr>()?;
                    }
                    Ok(())
                })?;
            }
            Ok(())
        });
    }
    out
}

//! A typed view of the derive input. It keeps the original syn nodes so that every error and
//! every generated item can point at the user's own tokens.

use proc_macro2::Span;
use syn::{Attribute, DataEnum, DeriveInput, Fields, Ident, Result, Type};

use crate::attr::{self, AggregateAttrs, EnumAttrs, VariantAttrs};
use crate::case::{is_keyword, snake_case};

/// An enum with `#[derive(DomainEvent)]`.
pub(crate) struct EventEnum<'a> {
    pub input: &'a DeriveInput,
    pub attrs: EnumAttrs,
    /// The type-name prefix (from `prefix = ".."`, or derived from the enum's name).
    pub prefix: String,
    /// The handler trait's name.
    pub handler_trait: Ident,
    /// Enum-level serde options that also shape variant payloads.
    pub serde: attr::SerdeEnumOptions,
    pub variants: Vec<Variant<'a>>,
}

/// One variant: one event type.
pub(crate) struct Variant<'a> {
    pub original: &'a syn::Variant,
    pub attrs: VariantAttrs,
    /// The event type name.
    pub name: String,
    /// The current schema version.
    pub version: u32,
    /// The handler method on the handler trait.
    pub handler: Ident,
    pub fields: Vec<Field<'a>>,
}

/// How the variant's fields are written.
#[derive(Clone, Copy, PartialEq, Eq)]
pub(crate) enum Style {
    Unit,
    Tuple,
    Struct,
}

/// A variant field with the binding used to pass it to the handler.
pub(crate) struct Field<'a> {
    pub ty: &'a Type,
    pub binding: Ident,
    /// The field's `#[serde(..)]` attributes, forwarded to the payload decoder.
    pub serde_attrs: Vec<&'a Attribute>,
}

impl<'a> EventEnum<'a> {
    pub fn from_syn(input: &'a DeriveInput, data: &'a DataEnum) -> Result<Self> {
        let attrs = attr::enum_attrs(&input.attrs)?;
        let prefix = match &attrs.prefix {
            Some(p) => p.value(),
            None => default_prefix(&input.ident.to_string()),
        };
        let handler_trait = attrs
            .handler_trait
            .clone()
            .unwrap_or_else(|| Ident::new(&format!("Apply{}", input.ident), input.ident.span()));
        let variants = data
            .variants
            .iter()
            .map(|v| Variant::from_syn(v, &prefix))
            .collect::<Result<_>>()?;
        Ok(EventEnum {
            input,
            attrs,
            prefix,
            handler_trait,
            serde: attr::serde_enum_options(&input.attrs),
            variants,
        })
    }
}

impl<'a> Variant<'a> {
    fn from_syn(original: &'a syn::Variant, prefix: &str) -> Result<Self> {
        let attrs = attr::variant_attrs(&original.attrs)?;
        let snake = snake_case(&original.ident.to_string());
        let name = match &attrs.name {
            Some(n) => n.value(),
            None => format!("{prefix}.{snake}"),
        };
        let version = attrs.version.as_ref().map_or(1, |v| v.value);
        let handler = match &attrs.handler {
            Some(h) => h.clone(),
            // The handler is spanned on the variant so that rustc's "missing `x` in
            // implementation" note points at the variant it belongs to.
            None if is_keyword(&snake) && !matches!(snake.as_str(), "self" | "super" | "crate") => {
                Ident::new_raw(&snake, original.ident.span())
            }
            None => Ident::new(&snake, original.ident.span()),
        };
        let single = original.fields.len() == 1;
        let fields = original
            .fields
            .iter()
            .enumerate()
            .map(|(i, f)| Field {
                ty: &f.ty,
                serde_attrs: f
                    .attrs
                    .iter()
                    .filter(|a| a.path().is_ident("serde"))
                    .collect(),
                binding: match &f.ident {
                    Some(id) => id.clone(),
                    None if single => Ident::new("value", Span::call_site()),
                    None => Ident::new(&format!("value{i}"), Span::call_site()),
                },
            })
            .collect();
        Ok(Variant {
            original,
            attrs,
            name,
            version,
            handler,
            fields,
        })
    }

    pub fn ident(&self) -> &'a Ident {
        &self.original.ident
    }

    pub fn style(&self) -> Style {
        match self.original.fields {
            Fields::Unit => Style::Unit,
            Fields::Unnamed(_) => Style::Tuple,
            Fields::Named(_) => Style::Struct,
        }
    }
}

/// `AccountEvent` -> `account`, `OrderEvents` -> `order`, `Billing` -> `billing`.
fn default_prefix(enum_name: &str) -> String {
    let snake = snake_case(enum_name);
    for suffix in ["_events", "_event"] {
        if let Some(stripped) = snake.strip_suffix(suffix)
            && !stripped.is_empty()
        {
            return stripped.to_owned();
        }
    }
    snake
}

/// A struct with `#[derive(Aggregate)]`.
pub(crate) struct AggregateInput<'a> {
    pub input: &'a DeriveInput,
    pub attrs: AggregateAttrs,
    /// The type name used for stream ids.
    pub name: String,
}

impl<'a> AggregateInput<'a> {
    pub fn from_syn(input: &'a DeriveInput) -> Result<Self> {
        let attrs = attr::aggregate_attrs(&input.attrs)?;
        let name = match &attrs.name {
            Some(n) => n.value(),
            None => snake_case(&input.ident.to_string()),
        };
        Ok(AggregateInput { input, attrs, name })
    }

    /// Whether the aggregate opted into snapshots.
    pub fn snapshots(&self) -> bool {
        self.attrs.snapshot.is_some()
            || self.attrs.snapshot_every.is_some()
            || self.attrs.state_version.is_some()
    }
}

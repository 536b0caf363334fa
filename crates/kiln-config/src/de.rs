//! A serde `Deserializer` over `toml`'s spanned document tree that records every problem.
//!
//! Why not `toml::from_str`: it stops at the first error and its errors carry a span but no
//! key path. Instead the file is parsed with `toml::de::DeTable::parse` (every key and value
//! keeps its byte span; parsing stops at a syntax error) and the `raw` types are deserialised
//! from that tree by this module, which knows the key path of every node as it descends. So:
//!
//! - every error becomes a [`Diagnostic`] at the exact node, with its key path;
//! - unknown keys are found before a struct's visitor runs, using the field list serde's derive
//!   passes to `deserialize_struct` (the same list `deny_unknown_fields` checks), so *all*
//!   unknown keys are reported, each with a suggestion, and the known keys are still read;
//! - `raw::Spanned` fields absorb a failed value (see `raw`), so one wrong type does not hide
//!   the rest of the file.
//!
//! Errors leaving this module's `deserialize_*` methods are always [`Error::Reported`]: the
//! diagnostic has been recorded where the node was known. This module knows TOML and serde,
//! not kiln's schema; the nouns in messages come from serde names (`#[serde(rename)]`).

use std::cell::RefCell;
use std::fmt;
use std::ops::Range;

use serde::de::value::{BorrowedStrDeserializer, StrDeserializer, UsizeDeserializer};
use serde::de::{
    self, DeserializeSeed, EnumAccess, IntoDeserializer, MapAccess, SeqAccess, VariantAccess,
    Visitor,
};
use toml::de::{DeString, DeTable, DeValue};

use crate::diagnostic::{Diagnostic, Diagnostics, SourceFile};
use crate::raw::{SPANNED, SPANNED_FIELDS};
use crate::suggest;

/// Deserialise a whole document into `T`, recording problems in `diags`. `None` when the root
/// itself could not be built (its problems are recorded).
pub(crate) fn from_document<T>(
    src: &SourceFile,
    root: toml::Spanned<DeTable<'_>>,
    diags: &mut Diagnostics,
) -> Option<T>
where
    T: for<'de> de::Deserialize<'de>,
{
    let span = root.span();
    let value = DeValue::Table(root.into_inner());
    let ctx = Ctx {
        src,
        diags: RefCell::new(Vec::new()),
    };
    let result = T::deserialize(ValueDe {
        ctx: &ctx,
        value: &value,
        span,
        path: String::new(),
    });
    let recorded = ctx.diags.into_inner();
    let recorded_any = !recorded.is_empty();
    for d in recorded {
        diags.push(d);
    }
    match result {
        Ok(v) => Some(v),
        Err(e) => {
            if !recorded_any {
                // Every error is recorded where it happens; this is a safety net.
                diags.push(src.file_error(format!("invalid configuration: {e}")));
            }
            None
        }
    }
}

/// Key path of a child: `image[0]` + `name` → `image[0].name`; keys that are not bare TOML
/// keys are quoted.
pub(crate) fn child_path(parent: &str, key: &str) -> String {
    let key = quote_key(key);
    if parent.is_empty() {
        key
    } else {
        format!("{parent}.{key}")
    }
}

pub(crate) fn index_path(parent: &str, index: usize) -> String {
    format!("{parent}[{index}]")
}

fn quote_key(key: &str) -> String {
    let bare = !key.is_empty()
        && key
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-');
    if bare {
        key.to_owned()
    } else {
        let mut quoted = String::with_capacity(key.len() + 2);
        quoted.push('"');
        for c in key.chars() {
            match c {
                '"' => quoted.push_str("\\\""),
                '\\' => quoted.push_str("\\\\"),
                c if c.is_control() => quoted.push_str(&c.escape_unicode().to_string()),
                c => quoted.push(c),
            }
        }
        quoted.push('"');
        quoted
    }
}

/// "in `image[0]`" or, at the root, nothing: for messages about a table's keys.
fn in_table(path: &str) -> String {
    if path.is_empty() {
        String::from(" at the top level")
    } else {
        format!(" in `{path}`")
    }
}

struct Ctx<'a> {
    src: &'a SourceFile,
    diags: RefCell<Vec<Diagnostic>>,
}

impl Ctx<'_> {
    fn record(&self, d: Diagnostic) -> Error {
        self.diags.borrow_mut().push(d);
        Error::Reported
    }
}

/// The deserializer's error. Anything but `Reported` is turned into a diagnostic at the node
/// whose visitor produced it.
#[derive(Debug)]
pub(crate) enum Error {
    /// Already recorded as a diagnostic.
    Reported,
    /// From a visitor, e.g. an integer that does not fit the target type.
    Message(String),
    /// A required key is absent.
    Missing(&'static str),
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Error::Reported => f.write_str("error already reported"),
            Error::Message(m) => f.write_str(m),
            Error::Missing(field) => write!(f, "missing key `{field}`"),
        }
    }
}

impl std::error::Error for Error {}

impl de::Error for Error {
    fn custom<T: fmt::Display>(msg: T) -> Self {
        Error::Message(msg.to_string())
    }

    fn missing_field(field: &'static str) -> Self {
        Error::Missing(field)
    }
}

fn kind_of(value: &DeValue<'_>) -> &'static str {
    match value {
        DeValue::String(_) => "a string",
        DeValue::Integer(_) => "an integer",
        DeValue::Float(_) => "a float",
        DeValue::Boolean(_) => "a boolean",
        DeValue::Datetime(_) => "a datetime",
        DeValue::Array(_) => "an array",
        DeValue::Table(_) => "a table",
    }
}

fn last_key(path: &str) -> &str {
    let end = path.trim_end_matches(|c: char| c == ']' || c.is_ascii_digit() || c == '[');
    end.rsplit('.').next().unwrap_or(end)
}

/// Deserializes one value of the tree.
struct ValueDe<'a, 'i> {
    ctx: &'a Ctx<'a>,
    value: &'a DeValue<'i>,
    span: Range<usize>,
    path: String,
}

impl<'a, 'i> ValueDe<'a, 'i> {
    fn child(&self, value: &'a toml::Spanned<DeValue<'i>>, path: String) -> ValueDe<'a, 'i> {
        ValueDe {
            ctx: self.ctx,
            value: value.get_ref(),
            span: value.span(),
            path,
        }
    }

    fn error_here(&self, message: String) -> Diagnostic {
        self.ctx
            .src
            .error(self.span.clone(), message)
            .with_key(self.path.clone())
    }

    /// Turn a visitor's error into a diagnostic at this node.
    fn report(&self, error: Error) -> Error {
        match error {
            Error::Reported => Error::Reported,
            Error::Message(m) => {
                let d = self.error_here(format!("invalid value for `{}`: {m}", self.path));
                self.ctx.record(d)
            }
            Error::Missing(field) if self.path.is_empty() => {
                let d = self
                    .ctx
                    .src
                    .file_error(format!("missing top-level key `{field}`"));
                self.ctx.record(d.with_key(field))
            }
            Error::Missing(field) => {
                let d = self
                    .ctx
                    .src
                    .error(
                        self.span.clone(),
                        format!("missing key `{field}` in `{}`", self.path),
                    )
                    .with_key(child_path(&self.path, field));
                self.ctx.record(d)
            }
        }
    }

    fn wrap<T>(&self, result: Result<T, Error>) -> Result<T, Error> {
        result.map_err(|e| self.report(e))
    }

    fn type_error(&self, expected: &str) -> Error {
        let found = kind_of(self.value);
        let mut d = self.error_here(format!(
            "wrong type for `{}`: expected {expected}, found {found}",
            self.path
        ));
        let key = last_key(&self.path);
        match (expected, self.value) {
            ("an array", DeValue::Table(_)) => {
                d = d.with_help(format!(
                    "write `[[{key}]]` for each element, or `{key} = [ ... ]`"
                ));
            }
            (
                "a string",
                DeValue::Integer(_)
                | DeValue::Float(_)
                | DeValue::Boolean(_)
                | DeValue::Datetime(_),
            ) => {
                d = d.with_help("put the value in quotes to make it a string");
            }
            _ => {}
        }
        self.ctx.record(d)
    }

    fn integer(&self) -> Result<i64, Error> {
        match self.value {
            DeValue::Integer(i) => i64::from_str_radix(i.as_str(), i.radix()).map_err(|_| {
                let d = self.error_here(format!("integer out of range for `{}`", self.path));
                self.ctx.record(d)
            }),
            _ => Err(self.type_error("an integer")),
        }
    }

    /// Records an unknown key; returns the field suggested instead, if any.
    fn unknown_key(
        &self,
        key: &toml::Spanned<DeString<'_>>,
        fields: &'static [&'static str],
    ) -> Option<&'static str> {
        let name: &str = key.get_ref();
        let suggestion = suggest::closest(name, fields.iter().copied());
        let help = suggest::help(name, fields);
        let message = if self.path.is_empty() {
            format!("unknown top-level key `{name}`")
        } else {
            format!("unknown key `{name}`{}", in_table(&self.path))
        };
        let d = self
            .ctx
            .src
            .error(key.span(), message)
            .with_key(child_path(&self.path, name))
            .with_help(help);
        self.ctx.record(d);
        suggestion
    }
}

macro_rules! deserialize_integers {
    ($($method:ident)*) => {$(
        fn $method<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Error> {
            let n = self.integer()?;
            self.wrap(visitor.visit_i64(n))
        }
    )*};
}

impl<'de> de::Deserializer<'de> for ValueDe<'_, '_> {
    type Error = Error;

    fn deserialize_any<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Error> {
        let result = match self.value {
            DeValue::String(s) => visitor.visit_str(s),
            DeValue::Integer(_) => {
                let n = self.integer()?;
                visitor.visit_i64(n)
            }
            DeValue::Float(_) => return self.deserialize_f64(visitor),
            DeValue::Boolean(b) => visitor.visit_bool(*b),
            DeValue::Datetime(d) => visitor.visit_string(d.to_string()),
            DeValue::Array(_) => return self.deserialize_seq(visitor),
            DeValue::Table(_) => return self.deserialize_map(visitor),
        };
        self.wrap(result)
    }

    fn deserialize_bool<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Error> {
        match self.value {
            DeValue::Boolean(b) => self.wrap(visitor.visit_bool(*b)),
            _ => Err(self.type_error("a boolean")),
        }
    }

    deserialize_integers! {
        deserialize_i8 deserialize_i16 deserialize_i32 deserialize_i64
        deserialize_u8 deserialize_u16 deserialize_u32 deserialize_u64
    }

    fn deserialize_f32<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Error> {
        self.deserialize_f64(visitor)
    }

    fn deserialize_f64<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Error> {
        let f = match self.value {
            DeValue::Float(f) => f.as_str().parse::<f64>().ok(),
            #[expect(
                clippy::cast_precision_loss,
                reason = "TOML integers used as floats are small"
            )]
            DeValue::Integer(_) => Some(self.integer()? as f64),
            _ => return Err(self.type_error("a number")),
        };
        match f {
            Some(f) => self.wrap(visitor.visit_f64(f)),
            None => Err(self.type_error("a number")),
        }
    }

    fn deserialize_char<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Error> {
        self.deserialize_str(visitor)
    }

    fn deserialize_str<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Error> {
        match self.value {
            DeValue::String(s) => self.wrap(visitor.visit_str(s)),
            _ => Err(self.type_error("a string")),
        }
    }

    fn deserialize_string<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Error> {
        self.deserialize_str(visitor)
    }

    fn deserialize_bytes<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Error> {
        self.deserialize_any(visitor)
    }

    fn deserialize_byte_buf<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Error> {
        self.deserialize_any(visitor)
    }

    fn deserialize_option<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Error> {
        // TOML has no null: a present key is always `Some`.
        visitor.visit_some(self)
    }

    fn deserialize_unit<V: Visitor<'de>>(self, _visitor: V) -> Result<V::Value, Error> {
        Err(self.type_error("nothing"))
    }

    fn deserialize_unit_struct<V: Visitor<'de>>(
        self,
        _name: &'static str,
        visitor: V,
    ) -> Result<V::Value, Error> {
        self.deserialize_unit(visitor)
    }

    fn deserialize_newtype_struct<V: Visitor<'de>>(
        self,
        _name: &'static str,
        visitor: V,
    ) -> Result<V::Value, Error> {
        visitor.visit_newtype_struct(self)
    }

    fn deserialize_seq<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Error> {
        match self.value {
            DeValue::Array(items) => {
                let access = ArrayAccess {
                    parent: &self,
                    items: items.iter().enumerate(),
                };
                let result = visitor.visit_seq(access);
                self.wrap(result)
            }
            _ => Err(self.type_error("an array")),
        }
    }

    fn deserialize_tuple<V: Visitor<'de>>(
        self,
        _len: usize,
        visitor: V,
    ) -> Result<V::Value, Error> {
        self.deserialize_seq(visitor)
    }

    fn deserialize_tuple_struct<V: Visitor<'de>>(
        self,
        _name: &'static str,
        _len: usize,
        visitor: V,
    ) -> Result<V::Value, Error> {
        self.deserialize_seq(visitor)
    }

    fn deserialize_map<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Error> {
        match self.value {
            DeValue::Table(table) => {
                let access = TableAccess {
                    parent: &self,
                    entries: in_file_order(table).into_iter(),
                    pending: None,
                };
                let result = visitor.visit_map(access);
                self.wrap(result)
            }
            _ => Err(self.type_error("a table")),
        }
    }

    fn deserialize_struct<V: Visitor<'de>>(
        self,
        name: &'static str,
        fields: &'static [&'static str],
        visitor: V,
    ) -> Result<V::Value, Error> {
        if name == SPANNED {
            let access = SpannedAccess::new(self.span.clone(), self.path.clone(), Some(self));
            return visitor.visit_map(access);
        }
        let DeValue::Table(table) = self.value else {
            return Err(self.type_error("a table"));
        };
        let mut known = Vec::with_capacity(table.len());
        let mut suggested = Vec::new();
        for (key, value) in in_file_order(table) {
            if fields.contains(&key.get_ref().as_ref()) {
                known.push((key, value));
            } else if let Some(s) = self.unknown_key(key, fields) {
                suggested.push(s);
            }
        }
        let access = TableAccess {
            parent: &self,
            entries: known.into_iter(),
            pending: None,
        };
        match visitor.visit_map(access) {
            // `nmae = …` was reported with "did you mean `name`?"; "missing key `name`" would
            // only repeat it.
            Err(Error::Missing(field)) if suggested.contains(&field) => Err(Error::Reported),
            result => self.wrap(result),
        }
    }

    fn deserialize_enum<V: Visitor<'de>>(
        self,
        name: &'static str,
        variants: &'static [&'static str],
        visitor: V,
    ) -> Result<V::Value, Error> {
        let known_note = format!("known {name}s: {}", suggest::list(variants));
        match self.value {
            DeValue::String(s) => {
                if !variants.contains(&s.as_ref()) {
                    let d = self
                        .error_here(format!("unknown {name} `{s}` in `{}`", self.path))
                        .with_opt_help(
                            suggest::closest(s, variants.iter().copied())
                                .map(|c| format!("did you mean `{c}`?")),
                        )
                        .with_note(known_note);
                    return Err(self.ctx.record(d));
                }
                let result = visitor.visit_enum(StrEnum {
                    de: &self,
                    variant: s,
                });
                self.wrap(result)
            }
            DeValue::Table(table) => {
                let keys = in_file_order(table);
                match keys.as_slice() {
                    [] => {
                        let d = self
                            .error_here(format!("`{}` names no {name}", self.path))
                            .with_help(format!("add one of {}", suggest::list(variants)));
                        Err(self.ctx.record(d))
                    }
                    [(key, value)] => {
                        let k: &str = key.get_ref();
                        if !variants.contains(&k) {
                            let d = self
                                .ctx
                                .src
                                .error(
                                    key.span(),
                                    format!("unknown {name} `{k}` in `{}`", self.path),
                                )
                                .with_key(child_path(&self.path, k))
                                .with_opt_help(
                                    suggest::closest(k, variants.iter().copied())
                                        .map(|c| format!("did you mean `{c}`?")),
                                )
                                .with_note(known_note);
                            return Err(self.ctx.record(d));
                        }
                        let access = TableEnum {
                            de: &self,
                            key,
                            value,
                        };
                        let result = visitor.visit_enum(access);
                        self.wrap(result)
                    }
                    [(first, _), (second, _), ..] => {
                        let d = self
                            .ctx
                            .src
                            .error(
                                second.span(),
                                format!(
                                    "`{}` has more than one {name}: `{}` and `{}`",
                                    self.path,
                                    first.get_ref(),
                                    second.get_ref()
                                ),
                            )
                            .with_key(self.path.clone())
                            .with_note(known_note)
                            .with_help(format!("keep exactly one {name} table here"));
                        Err(self.ctx.record(d))
                    }
                }
            }
            _ => Err(self.type_error("a table")),
        }
    }

    fn deserialize_identifier<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Error> {
        self.deserialize_str(visitor)
    }

    fn deserialize_ignored_any<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Error> {
        visitor.visit_unit()
    }
}

/// A table's entries as written (`toml` keeps them sorted by key), so that values are read,
/// and problems found, top to bottom.
fn in_file_order<'a, 'i>(table: &'a DeTable<'i>) -> Vec<Entry<'a, 'i>> {
    let mut entries: Vec<Entry<'a, 'i>> = table.iter().collect();
    entries.sort_by_key(|(key, _)| key.span().start);
    entries
}

struct ArrayAccess<'p, 'a, 'i, I> {
    parent: &'p ValueDe<'a, 'i>,
    items: I,
}

impl<'de, 'a, 'i: 'a, I> SeqAccess<'de> for ArrayAccess<'_, 'a, 'i, I>
where
    I: Iterator<Item = (usize, &'a toml::Spanned<DeValue<'i>>)>,
{
    type Error = Error;

    fn next_element_seed<T: DeserializeSeed<'de>>(
        &mut self,
        seed: T,
    ) -> Result<Option<T::Value>, Error> {
        match self.items.next() {
            Some((i, item)) => {
                let de = self.parent.child(item, index_path(&self.parent.path, i));
                seed.deserialize(de).map(Some)
            }
            None => Ok(None),
        }
    }
}

type Entry<'a, 'i> = (
    &'a toml::Spanned<DeString<'i>>,
    &'a toml::Spanned<DeValue<'i>>,
);

struct TableAccess<'p, 'a, 'i> {
    parent: &'p ValueDe<'a, 'i>,
    entries: std::vec::IntoIter<Entry<'a, 'i>>,
    pending: Option<Entry<'a, 'i>>,
}

impl<'de> MapAccess<'de> for TableAccess<'_, '_, '_> {
    type Error = Error;

    fn next_key_seed<K: DeserializeSeed<'de>>(
        &mut self,
        seed: K,
    ) -> Result<Option<K::Value>, Error> {
        let Some((key, value)) = self.entries.next() else {
            return Ok(None);
        };
        self.pending = Some((key, value));
        let de = KeyDe {
            key: key.get_ref(),
            span: key.span(),
            path: child_path(&self.parent.path, key.get_ref()),
        };
        seed.deserialize(de).map(Some)
    }

    fn next_value_seed<V: DeserializeSeed<'de>>(&mut self, seed: V) -> Result<V::Value, Error> {
        let (key, value) = self
            .pending
            .take()
            .ok_or_else(|| Error::Message("value requested before its key".into()))?;
        let de = self
            .parent
            .child(value, child_path(&self.parent.path, key.get_ref()));
        seed.deserialize(de)
    }
}

/// Deserializes a table key (always a string), or a `raw::Spanned` around one.
struct KeyDe<'a> {
    key: &'a str,
    span: Range<usize>,
    path: String,
}

impl<'de> de::Deserializer<'de> for KeyDe<'_> {
    type Error = Error;

    fn deserialize_any<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Error> {
        visitor.visit_str(self.key)
    }

    fn deserialize_struct<V: Visitor<'de>>(
        self,
        name: &'static str,
        _fields: &'static [&'static str],
        visitor: V,
    ) -> Result<V::Value, Error> {
        if name == SPANNED {
            let access = SpannedAccess::new(
                self.span.clone(),
                self.path.clone(),
                Some(StrDeserializer::<Error>::new(self.key)),
            );
            visitor.visit_map(access)
        } else {
            visitor.visit_str(self.key)
        }
    }

    serde::forward_to_deserialize_any! {
        bool i8 i16 i32 i64 i128 u8 u16 u32 u64 u128 f32 f64 char str string
        bytes byte_buf option unit unit_struct newtype_struct seq tuple
        tuple_struct map enum identifier ignored_any
    }
}

/// Feeds a `raw::Spanned` visitor: `start`, `end`, `path`, then the value itself.
struct SpannedAccess<D> {
    span: Range<usize>,
    path: String,
    value: Option<D>,
    next_field: usize,
}

impl<D> SpannedAccess<D> {
    fn new(span: Range<usize>, path: String, value: Option<D>) -> Self {
        SpannedAccess {
            span,
            path,
            value,
            next_field: 0,
        }
    }
}

impl<'de, D: de::Deserializer<'de, Error = Error>> MapAccess<'de> for SpannedAccess<D> {
    type Error = Error;

    fn next_key_seed<K: DeserializeSeed<'de>>(
        &mut self,
        seed: K,
    ) -> Result<Option<K::Value>, Error> {
        match SPANNED_FIELDS.get(self.next_field) {
            Some(field) => seed
                .deserialize(BorrowedStrDeserializer::<Error>::new(field))
                .map(Some),
            None => Ok(None),
        }
    }

    fn next_value_seed<V: DeserializeSeed<'de>>(&mut self, seed: V) -> Result<V::Value, Error> {
        let field = self.next_field;
        self.next_field += 1;
        match field {
            0 => seed.deserialize(UsizeDeserializer::<Error>::new(self.span.start)),
            1 => seed.deserialize(UsizeDeserializer::<Error>::new(self.span.end)),
            2 => seed.deserialize(self.path.as_str().into_deserializer()),
            _ => match self.value.take() {
                Some(value) => seed.deserialize(value),
                None => Err(Error::Message("spanned value read twice".into())),
            },
        }
    }
}

/// An enum written as a string (`"qcow2"`): only unit variants fit.
struct StrEnum<'p, 'a, 'i> {
    de: &'p ValueDe<'a, 'i>,
    variant: &'p str,
}

impl<'de, 'p> EnumAccess<'de> for StrEnum<'p, '_, '_> {
    type Error = Error;
    type Variant = Self;

    fn variant_seed<V: DeserializeSeed<'de>>(self, seed: V) -> Result<(V::Value, Self), Error> {
        let v = seed.deserialize(StrDeserializer::<Error>::new(self.variant))?;
        Ok((v, self))
    }
}

impl<'de> VariantAccess<'de> for StrEnum<'_, '_, '_> {
    type Error = Error;

    fn unit_variant(self) -> Result<(), Error> {
        Ok(())
    }

    fn newtype_variant_seed<T: DeserializeSeed<'de>>(self, _seed: T) -> Result<T::Value, Error> {
        Err(self.de.type_error("a table"))
    }

    fn tuple_variant<V: Visitor<'de>>(self, _len: usize, _visitor: V) -> Result<V::Value, Error> {
        Err(self.de.type_error("a table"))
    }

    fn struct_variant<V: Visitor<'de>>(
        self,
        _fields: &'static [&'static str],
        _visitor: V,
    ) -> Result<V::Value, Error> {
        Err(self.de.type_error("a table"))
    }
}

/// An enum written as a table with one key (`{ qemu = { … } }`).
struct TableEnum<'p, 'a, 'i> {
    de: &'p ValueDe<'a, 'i>,
    key: &'a toml::Spanned<DeString<'i>>,
    value: &'a toml::Spanned<DeValue<'i>>,
}

impl<'de, 'p, 'a, 'i> EnumAccess<'de> for TableEnum<'p, 'a, 'i> {
    type Error = Error;
    type Variant = ValueDe<'a, 'i>;

    fn variant_seed<V: DeserializeSeed<'de>>(
        self,
        seed: V,
    ) -> Result<(V::Value, ValueDe<'a, 'i>), Error> {
        let v = seed.deserialize(StrDeserializer::<Error>::new(self.key.get_ref()))?;
        let inner = self
            .de
            .child(self.value, child_path(&self.de.path, self.key.get_ref()));
        Ok((v, inner))
    }
}

impl<'de> VariantAccess<'de> for ValueDe<'_, '_> {
    type Error = Error;

    fn unit_variant(self) -> Result<(), Error> {
        Err(self.type_error("nothing"))
    }

    fn newtype_variant_seed<T: DeserializeSeed<'de>>(self, seed: T) -> Result<T::Value, Error> {
        seed.deserialize(self)
    }

    fn tuple_variant<V: Visitor<'de>>(self, _len: usize, visitor: V) -> Result<V::Value, Error> {
        de::Deserializer::deserialize_seq(self, visitor)
    }

    fn struct_variant<V: Visitor<'de>>(
        self,
        fields: &'static [&'static str],
        visitor: V,
    ) -> Result<V::Value, Error> {
        de::Deserializer::deserialize_struct(self, "", fields, visitor)
    }
}

//! Stage one: the file as written, deserialised by serde (STYLE.md §5).
//!
//! These types mirror `kiln.toml` key for key, with `deny_unknown_fields`, and hold every value
//! in a [`Spanned`] so that stage two (`validate`) can point at it. Nothing here is checked
//! beyond TOML types: strings are not yet interpolated, paths not resolved, enums such as
//! `format` are still strings (so that they, too, may use `{{ … }}`). Required keys are plain
//! fields, optional ones `Option`s; serde's derive supplies the set of known keys that
//! `de` uses for "did you mean".
//!
//! These types are only ever deserialised by `de::Deserializer`, which records every error
//! it finds as a diagnostic; a [`Spanned`] whose value failed holds `None` instead of failing
//! its parent, so that one bad value does not hide the problems next to it.

use std::fmt;
use std::marker::PhantomData;
use std::ops::Range;

use serde::Deserialize;
use serde::de::{self, Deserializer, MapAccess, Visitor};

/// The whole file.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct File {
    /// Optional here so that a missing `[project]` does not hide the images' problems.
    pub(crate) project: Option<Spanned<Project>>,
    pub(crate) vars: Option<Spanned<Entries<Spanned<String>>>>,
    pub(crate) image: Option<Spanned<Vec<Spanned<Image>>>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct Project {
    pub(crate) name: Spanned<String>,
    pub(crate) output_dir: Option<Spanned<String>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct Image {
    pub(crate) name: Spanned<String>,
    pub(crate) source: Spanned<Source>,
    pub(crate) ssh: Option<Spanned<Ssh>>,
    pub(crate) shutdown: Option<Spanned<Shutdown>>,
    pub(crate) provision: Option<Spanned<Vec<Spanned<Step>>>>,
    pub(crate) test: Option<Spanned<Vec<Spanned<Step>>>>,
    pub(crate) generalize: Option<Spanned<Generalize>>,
    pub(crate) output: Option<Spanned<Output>>,
}

/// `generalize = true | false | ["machine-id", …]`. Written by hand rather than
/// `#[serde(untagged)]`, whose errors say nothing useful (STYLE.md §5): a wrong type reads
/// "expected true, false or a list of operation names".
#[derive(Debug)]
pub(crate) enum Generalize {
    Enabled(bool),
    /// The default operations plus these.
    With(Vec<Spanned<String>>),
}

impl<'de> Deserialize<'de> for Generalize {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct GeneralizeVisitor;

        impl<'de> Visitor<'de> for GeneralizeVisitor {
            type Value = Generalize;

            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("true, false or a list of operation names")
            }

            fn visit_bool<E: de::Error>(self, v: bool) -> Result<Self::Value, E> {
                Ok(Generalize::Enabled(v))
            }

            fn visit_seq<A: de::SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
                let mut ops = Vec::new();
                while let Some(op) = seq.next_element::<Spanned<String>>()? {
                    ops.push(op);
                }
                Ok(Generalize::With(ops))
            }
        }

        deserializer.deserialize_any(GeneralizeVisitor)
    }
}

/// `source = { <provider> = { … } }`: exactly one provider table. The serde name is the noun
/// `de` uses in messages ("unknown provider `xen`").
#[derive(Debug, Deserialize)]
#[serde(rename = "provider")]
pub(crate) enum Source {
    #[serde(rename = "qemu")]
    Qemu(Spanned<Qemu>),
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct Qemu {
    pub(crate) disk: Spanned<String>,
    pub(crate) format: Option<Spanned<String>>,
    pub(crate) kernel: Option<Spanned<String>>,
    pub(crate) initrd: Option<Spanned<String>>,
    pub(crate) append: Option<Spanned<String>>,
    pub(crate) memory: Option<Spanned<i64>>,
    pub(crate) cpus: Option<Spanned<i64>>,
    pub(crate) accelerator: Option<Spanned<String>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct Ssh {
    pub(crate) user: Option<Spanned<String>>,
    pub(crate) timeout: Option<Spanned<String>>,
    pub(crate) host_key: Option<Spanned<String>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct Shutdown {
    pub(crate) command: Option<Spanned<String>>,
    pub(crate) timeout: Option<Spanned<String>>,
}

/// One element of `provision`/`test`: exactly one of `shell`, `file`, `collect`.
#[derive(Debug, Deserialize)]
#[serde(rename = "step kind")]
pub(crate) enum Step {
    #[serde(rename = "shell")]
    Shell(Box<Spanned<Shell>>),
    #[serde(rename = "file")]
    File(Spanned<FileStep>),
    #[serde(rename = "collect")]
    Collect(Spanned<Collect>),
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct Shell {
    pub(crate) inline: Option<Spanned<Vec<Spanned<String>>>>,
    pub(crate) script: Option<Spanned<String>>,
    pub(crate) env: Option<Spanned<Entries<Spanned<String>>>>,
    pub(crate) workdir: Option<Spanned<String>>,
    pub(crate) sudo: Option<Spanned<bool>>,
    pub(crate) timeout: Option<Spanned<String>>,
    pub(crate) name: Option<Spanned<String>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct FileStep {
    pub(crate) from: Spanned<String>,
    pub(crate) to: Spanned<String>,
    pub(crate) name: Option<Spanned<String>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct Collect {
    pub(crate) from: Spanned<String>,
    pub(crate) to: Spanned<String>,
    pub(crate) name: Option<Spanned<String>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct Output {
    pub(crate) format: Option<Spanned<String>>,
    pub(crate) compress: Option<Spanned<bool>>,
    pub(crate) name: Option<Spanned<String>>,
}

/// A value with the byte span and key path it came from.
///
/// Deserialised through a private protocol with `de::Deserializer` (the struct name
/// [`SPANNED`]), like `toml::Spanned`, but also carrying the key path. `value` is `None` when the
/// value was present but invalid; the problem has then already been recorded.
#[derive(Debug, Clone)]
pub(crate) struct Spanned<T> {
    pub(crate) span: Range<usize>,
    pub(crate) path: String,
    pub(crate) value: Option<T>,
}

impl<T> Spanned<T> {
    pub(crate) fn get(&self) -> Option<&T> {
        self.value.as_ref()
    }
}

pub(crate) const SPANNED: &str = "$__kiln_private_Spanned";
pub(crate) const SPANNED_FIELDS: &[&str] = &["start", "end", "path", "value"];

impl<'de, T: Deserialize<'de>> Deserialize<'de> for Spanned<T> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct SpannedVisitor<T>(PhantomData<T>);

        impl<'de, T: Deserialize<'de>> Visitor<'de> for SpannedVisitor<T> {
            type Value = Spanned<T>;

            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a value read by kiln's spanned deserializer")
            }

            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
                fn expect_key<'de, A: MapAccess<'de>>(
                    map: &mut A,
                    name: &'static str,
                ) -> Result<(), A::Error> {
                    match map.next_key::<&str>()? {
                        Some(key) if key == name => Ok(()),
                        _ => Err(de::Error::missing_field(name)),
                    }
                }
                expect_key(&mut map, "start")?;
                let start: usize = map.next_value()?;
                expect_key(&mut map, "end")?;
                let end: usize = map.next_value()?;
                expect_key(&mut map, "path")?;
                let path: String = map.next_value()?;
                expect_key(&mut map, "value")?;
                // The deserializer behind `map` has recorded the error; keep going without the
                // value so that siblings are still checked.
                let value = map.next_value::<T>().ok();
                Ok(Spanned {
                    span: start..end,
                    path,
                    value,
                })
            }
        }

        deserializer.deserialize_struct(SPANNED, SPANNED_FIELDS, SpannedVisitor(PhantomData))
    }
}

/// The entries of a table with free-form keys (`[vars]`, a step's `env`), in file order, with
/// the keys' spans.
#[derive(Debug)]
pub(crate) struct Entries<V>(pub(crate) Vec<(Spanned<String>, V)>);

impl<'de, V: Deserialize<'de>> Deserialize<'de> for Entries<V> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct EntriesVisitor<V>(PhantomData<V>);

        impl<'de, V: Deserialize<'de>> Visitor<'de> for EntriesVisitor<V> {
            type Value = Entries<V>;

            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a table")
            }

            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
                let mut entries = Vec::new();
                while let Some(key) = map.next_key::<Spanned<String>>()? {
                    entries.push((key, map.next_value()?));
                }
                Ok(Entries(entries))
            }
        }

        deserializer.deserialize_map(EntriesVisitor(PhantomData))
    }
}

//! `{{ … }}` in string values: minijinja templates over `[vars]`, `env`, `project` and `image`.
//!
//! Owns the template environment and the checks that give good messages: before rendering,
//! every variable the template reads (`Template::undeclared_variables`) must resolve, so that an
//! undefined one is named, with a suggestion, at the string that uses it. Rendering itself uses
//! strict undefined behaviour as a second line of defence. Strings without `{{` or `{%` are
//! returned untouched. This module does not know which keys hold strings; `validate` calls it
//! for each one.

use std::collections::{BTreeMap, BTreeSet};
use std::io;

use minijinja::{Environment, ErrorKind, UndefinedBehavior, Value};

use crate::diagnostic::{Diagnostics, SourceFile};
use crate::raw::Spanned;
use crate::suggest;

/// Names that `[vars]` may not use because templates see them as built-in objects.
pub(crate) const RESERVED: &[&str] = &["env", "project", "image"];

/// Enough for any reasonable expression; stops runaway loops in hostile or fuzzed input.
const FUEL: u64 = 20_000;
/// A rendered value longer than this is an error rather than a memory hog.
const MAX_OUTPUT: usize = 1 << 20;

pub(crate) struct Interpolator<'a> {
    jinja: Environment<'static>,
    vars: &'a BTreeMap<String, String>,
    env: &'a BTreeMap<String, String>,
    env_value: Value,
    globals: BTreeSet<String>,
}

/// What `project` and `image` mean where a string is rendered: `None` where they are not yet
/// known (in `project.name` itself, in an image's own `name`, or outside an image).
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct Scope<'s> {
    pub(crate) project: Option<&'s str>,
    pub(crate) image: Option<&'s str>,
}

impl<'a> Interpolator<'a> {
    pub(crate) fn new(
        vars: &'a BTreeMap<String, String>,
        env: &'a BTreeMap<String, String>,
    ) -> Self {
        let mut jinja = Environment::new();
        jinja.set_undefined_behavior(UndefinedBehavior::Strict);
        jinja.set_keep_trailing_newline(true);
        jinja.set_fuel(Some(FUEL));
        let globals = jinja.globals().map(|(name, _)| name.to_owned()).collect();
        Interpolator {
            jinja,
            vars,
            env,
            env_value: Value::from_serialize(env),
            globals,
        }
    }

    /// The interpolated string, or `None` after recording why it could not be rendered.
    pub(crate) fn render(
        &self,
        src: &SourceFile,
        scope: Scope<'_>,
        s: &Spanned<String>,
        diags: &mut Diagnostics,
    ) -> Option<String> {
        let text = s.get()?;
        if !text.contains("{{") && !text.contains("{%") {
            return Some(text.clone());
        }
        let error = |message: String| src.error(s.span.clone(), message).with_key(s.path.clone());
        let template = match self.jinja.template_from_str(text) {
            Ok(t) => t,
            Err(e) => {
                diags.push(error(format!(
                    "invalid template in `{}`: {}",
                    s.path,
                    describe(&e)
                )));
                return None;
            }
        };
        let mut undeclared: Vec<String> = template.undeclared_variables(true).into_iter().collect();
        undeclared.sort();
        let before = diags.len();
        for name in &undeclared {
            if let Some((message, help)) = self.check_name(name, scope, &s.path) {
                diags.push(error(message).with_opt_help(help));
            }
        }
        if diags.len() > before {
            return None;
        }
        let mut ctx: BTreeMap<&str, Value> = self
            .vars
            .iter()
            .map(|(k, v)| (k.as_str(), Value::from(v.as_str())))
            .collect();
        ctx.insert("env", self.env_value.clone());
        if let Some(project) = scope.project {
            ctx.insert("project", named(project));
        }
        if let Some(image) = scope.image {
            ctx.insert("image", named(image));
        }
        let mut out = Capped(Vec::new());
        match template.render_captured_to(ctx, &mut out) {
            Ok(_) => match String::from_utf8(out.0) {
                Ok(rendered) => Some(rendered),
                Err(_) => {
                    diags.push(error(format!("`{}` renders to invalid UTF-8", s.path)));
                    None
                }
            },
            Err(e) if e.kind() == ErrorKind::WriteFailure => {
                diags.push(error(format!(
                    "`{}` renders to more than {MAX_OUTPUT} bytes",
                    s.path
                )));
                None
            }
            Err(e) => {
                diags.push(error(format!(
                    "cannot render `{}`: {}",
                    s.path,
                    describe(&e)
                )));
                None
            }
        }
    }

    /// Why `name` (as `undeclared_variables(true)` gives it: `a` or `a.b`) does not resolve.
    fn check_name(
        &self,
        name: &str,
        scope: Scope<'_>,
        key_path: &str,
    ) -> Option<(String, Option<String>)> {
        let mut parts = name.splitn(3, '.');
        let first = parts.next().unwrap_or_default();
        let attr = parts.next();
        if self.vars.contains_key(first) {
            return None;
        }
        match (first, attr) {
            ("env", None) => None,
            ("env", Some(var)) if self.env.contains_key(var) => None,
            ("env", Some(var)) => Some((
                format!("undefined environment variable `{var}` in `{key_path}`"),
                Some(
                    match suggest::closest(var, self.env.keys().map(String::as_str)) {
                        Some(c) => format!("did you mean `env.{c}`?"),
                        None => format!("set `{var}` in the environment"),
                    },
                ),
            )),
            ("project" | "image", _) => {
                let available = if first == "project" {
                    scope.project.is_some()
                } else {
                    scope.image.is_some()
                };
                match attr {
                    _ if !available => Some((
                        format!("`{name}` is not available in `{key_path}`"),
                        Some(String::from(
                            "`project.name` can be used anywhere but in `project.name`; \
                             `image.name` inside an image, but not in its `name`",
                        )),
                    )),
                    None | Some("name") => None,
                    Some(other) => Some((
                        format!("undefined variable `{name}` in `{key_path}`"),
                        Some(match suggest::closest(other, ["name"]) {
                            Some(_) => format!("did you mean `{first}.name`?"),
                            None => format!("`{first}` only has `name`"),
                        }),
                    )),
                }
            }
            _ if self.globals.contains(first) => None,
            _ => {
                let mut known: Vec<&str> = self.vars.keys().map(String::as_str).collect();
                known.push("env");
                if scope.project.is_some() {
                    known.push("project");
                }
                if scope.image.is_some() {
                    known.push("image");
                }
                let help = match suggest::closest(first, known) {
                    Some(c) => format!("did you mean `{c}`?"),
                    None => String::from("declare it in `[vars]`"),
                };
                Some((
                    format!("undefined variable `{first}` in `{key_path}`"),
                    Some(help),
                ))
            }
        }
    }
}

fn named(name: &str) -> Value {
    let mut map = BTreeMap::new();
    map.insert("name", Value::from(name));
    Value::from_serialize(map)
}

/// `syntax error: unexpected end of input` and the like, on one line.
fn describe(e: &minijinja::Error) -> String {
    let detail = e.detail().map(|d| format!(": {d}")).unwrap_or_default();
    format!("{}{detail}", e.kind()).replace('\n', " ")
}

/// Stops a render whose output grows past [`MAX_OUTPUT`].
struct Capped(Vec<u8>);

impl io::Write for Capped {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        if self.0.len() + buf.len() > MAX_OUTPUT {
            return Err(io::Error::other("output too large"));
        }
        self.0.extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

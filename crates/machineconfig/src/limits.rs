//! Size, depth and expansion limits on everything the engine parses, so that no input (a
//! TalosConfig's patches, a Secret, a file given to the CLI) can make the operator use unbounded
//! memory or CPU, or overflow its stack.
//!
//! YAML aliases are the reason the limits count *expanded* values: a 30 KB stream of anchors that
//! each repeat the previous one ten times expands to gigabytes, and the YAML parser itself only
//! bounds how many aliases it follows. [`documents`] deserializes through a visitor that charges
//! every value it builds against a budget and stops at the first value over it. [`check`] applies
//! the same limits to a value built elsewhere (a JSON patch's value, a document after each patch
//! operation), walking it without recursion.
//!
//! The limits above are per input. One render reads many inputs (the configuration it starts
//! from and up to 64 patches, each within those limits), so it also has a [`RenderBudget`],
//! shared by all of them: every value parsed for the render and every value a JSON patch
//! operation adds is counted against [`RENDER_LIMITS`], and so is every step of applying the
//! patches (each value a merge visits, each item a keyed list merge compares, each value the
//! checks after a patch walk). Patches are parsed and applied one at a time, so that at most one
//! parsed patch is held at once; with the budget, what one render holds at its peak is bounded
//! by [`RENDER_LIMITS`] whatever the number of patches.

use std::cell::Cell;
use std::fmt;

use serde::de::{self, DeserializeSeed, Deserializer, MapAccess, SeqAccess, Visitor};
use serde_json::{Map, Number, Value};

/// How much one input may hold.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Bytes of text before parsing.
    pub input_bytes: usize,
    /// Documents in one YAML stream.
    pub documents: usize,
    /// Nesting levels of lists and mappings.
    pub depth: usize,
    /// Values (scalars, lists, mappings) after YAML aliases are expanded.
    pub values: usize,
    /// Bytes of strings and keys after YAML aliases are expanded.
    pub text_bytes: usize,
    /// Operations in one JSON 6902 patch.
    pub operations: usize,
}

/// The limits the engine applies. A real Talos configuration is a few thousand values at most
/// ten levels deep; the bootstrap data Secret that carries it is capped at 1 MiB by Kubernetes.
/// These leave ample room above that while bounding the worst case to well under a second and a
/// few tens of MiB.
pub const LIMITS: Limits = Limits {
    input_bytes: 2 * 1024 * 1024,
    documents: 64,
    depth: 64,
    values: 100_000,
    text_bytes: 4 * 1024 * 1024,
    operations: 1024,
};

/// What one render may spend, counted across the configuration it starts from and all of its
/// patches together.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RenderLimits {
    /// Values (scalars, lists, mappings, keys) parsed for the render, in the configuration data
    /// and in every patch, after YAML aliases are expanded, plus the values JSON patch operations
    /// add to the configuration.
    pub values: usize,
    /// Bytes of strings and keys, counted likewise.
    pub text_bytes: usize,
    /// Steps of applying the patches: each key and list item a strategic merge visits, each item
    /// a keyed list merge compares or a delete directive tests, each JSON patch operation, and
    /// each value the limit checks after a patch or operation walk.
    pub steps: usize,
}

/// The budget of one render: one and a half times the values and twice the text one input may
/// hold, and ten million steps. A real configuration and its patches are a few thousand values
/// and take tens of thousands of steps. At this budget the worst render holds about 35 MB at
/// its peak (one-entry mappings, 230 bytes a value), so the manager's ten concurrent reconciles
/// stay within the chart's 512 MiB limit (docs/reliability.md has the measurements).
pub const RENDER_LIMITS: RenderLimits = RenderLimits {
    values: 150_000,
    text_bytes: 8 * 1024 * 1024,
    steps: 10_000_000,
};

/// Which limit an input exceeds. The message says the limit; it never quotes the input, which
/// may hold keys and tokens.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum LimitError {
    #[error("{size} bytes is more than the limit of {limit} bytes")]
    InputBytes { size: usize, limit: usize },
    #[error("more than {limit} YAML documents")]
    Documents { limit: usize },
    #[error("lists and mappings nested more than {limit} levels deep")]
    Depth { limit: usize },
    #[error("more than {limit} values, counting each use of a YAML alias in full")]
    Values { limit: usize },
    #[error("more than {limit} bytes of text, counting each use of a YAML alias in full")]
    TextBytes { limit: usize },
    #[error("{count} operations is more than the limit of {limit} in one JSON patch")]
    Operations { count: usize, limit: usize },
    #[error(
        "over the render budget: more than {limit} values in the configuration and all its patches together, counting each use of a YAML alias in full"
    )]
    RenderValues { limit: usize },
    #[error(
        "over the render budget: more than {limit} bytes of text in the configuration and all its patches together, counting each use of a YAML alias in full"
    )]
    RenderTextBytes { limit: usize },
    #[error("over the render budget: more than {limit} steps to apply the patches")]
    RenderSteps { limit: usize },
}

/// How much a set of values holds, as the limits count it.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Size {
    pub values: usize,
    pub text_bytes: usize,
}

impl Size {
    /// Whether this is over the values or text limit of `limits`.
    pub(crate) fn over(&self, limits: &Limits) -> bool {
        self.values > limits.values || self.text_bytes > limits.text_bytes
    }

    pub(crate) fn saturating_add(self, other: Size) -> Size {
        Size {
            values: self.values.saturating_add(other.values),
            text_bytes: self.text_bytes.saturating_add(other.text_bytes),
        }
    }
}

/// What one render has spent of its [`RenderLimits`]: shared by the parse of the configuration
/// it starts from, the parse of each of its patches and their application. Not shared between
/// threads; one render runs on one.
#[derive(Debug)]
pub struct RenderBudget {
    limits: RenderLimits,
    values: Cell<usize>,
    text: Cell<usize>,
    steps: Cell<usize>,
}

/// What a [`RenderBudget`] has been charged so far.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Spent {
    pub values: usize,
    pub text_bytes: usize,
    pub steps: usize,
}

impl RenderBudget {
    pub fn new(limits: RenderLimits) -> RenderBudget {
        RenderBudget {
            limits,
            values: Cell::new(0),
            text: Cell::new(0),
            steps: Cell::new(0),
        }
    }

    pub fn limits(&self) -> RenderLimits {
        self.limits
    }

    pub fn spent(&self) -> Spent {
        Spent {
            values: self.values.get(),
            text_bytes: self.text.get(),
            steps: self.steps.get(),
        }
    }

    /// Count `values` values holding `text` bytes, built for this render.
    pub(crate) fn build(&self, values: usize, text: usize) -> Result<(), LimitError> {
        let v = self.values.get().saturating_add(values);
        let t = self.text.get().saturating_add(text);
        self.values.set(v);
        self.text.set(t);
        if v > self.limits.values {
            return Err(LimitError::RenderValues {
                limit: self.limits.values,
            });
        }
        if t > self.limits.text_bytes {
            return Err(LimitError::RenderTextBytes {
                limit: self.limits.text_bytes,
            });
        }
        Ok(())
    }

    /// Count `n` steps of applying patches.
    pub(crate) fn step(&self, n: usize) -> Result<(), LimitError> {
        let s = self.steps.get().saturating_add(n);
        self.steps.set(s);
        if s > self.limits.steps {
            return Err(LimitError::RenderSteps {
                limit: self.limits.steps,
            });
        }
        Ok(())
    }
}

/// What a walk of values charges to a render's budget, besides the per-input limits.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Charge<'a> {
    /// Nothing (an input checked on its own).
    Nothing,
    /// Each value as built for the render (an input parsed for it).
    Built(&'a RenderBudget),
    /// Each value as a step (a check of values already counted).
    Steps(&'a RenderBudget),
}

/// Why a YAML stream is refused: it does not parse (the problem and where, never the parser's
/// message, which may quote the input), or it exceeds a limit.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ParseError {
    #[error("{0}")]
    Yaml(#[source] crate::parse::SyntaxError),
    #[error("{0}")]
    Limit(#[source] LimitError),
}

/// Refuse text longer than the limit, before any parsing.
pub fn check_size(text: &str, limits: &Limits) -> Result<(), LimitError> {
    if text.len() > limits.input_bytes {
        return Err(LimitError::InputBytes {
            size: text.len(),
            limit: limits.input_bytes,
        });
    }
    Ok(())
}

/// Refuse text nested deeper than the limit, or holding more nodes than the limit of values,
/// before the YAML parser that builds values sees it. That parser scans every open flow
/// collection for each token, so 150,000 nested `{a: ` take it minutes before any value reaches
/// the depth check; and it holds every event of a document before the first value is built, so
/// a 300 KB list of 150,000 numbers held about 30 MB before the value limit stopped it. A
/// streaming parser walks the events here and stops at the first collection over the depth
/// limit, or at the first node (a scalar, a key included, or a collection; an alias is not
/// counted) over the limit of values: each such node is at least one value the parse would
/// charge, so nothing this refuses would have passed. Where it cannot read the text, every `[`
/// and `{` counts as an opening, so that no quoting trick can hide nesting from this check.
fn check_nesting(text: &str, limits: &Limits) -> Result<(), LimitError> {
    use granit_parser::{Event, Parser};
    let too_deep = LimitError::Depth {
        limit: limits.depth,
    };
    let too_many = LimitError::Values {
        limit: limits.values,
    };
    let mut depth = 0usize;
    let mut nodes = 0usize;
    for event in Parser::new_from_str(text) {
        match event {
            Ok((Event::SequenceStart(..) | Event::MappingStart(..), _)) => {
                depth += 1;
                nodes += 1;
                if depth > limits.depth {
                    return Err(too_deep);
                }
            }
            Ok((Event::SequenceEnd | Event::MappingEnd, _)) => depth = depth.saturating_sub(1),
            Ok((Event::Scalar(..), _)) => nodes += 1,
            Ok(_) => {}
            Err(_) => {
                let openings = text.bytes().filter(|b| matches!(b, b'[' | b'{')).count();
                return match openings > limits.depth.saturating_mul(16) {
                    true => Err(too_deep),
                    false => Ok(()),
                };
            }
        }
        if nodes > limits.values {
            return Err(too_many);
        }
    }
    Ok(())
}

/// The non-null documents of a YAML (or JSON) stream, within `limits`. The budget of values and
/// text is shared by all documents of the stream.
pub fn documents(text: &str, limits: &Limits) -> Result<Vec<Value>, ParseError> {
    non_null(stream(text, limits, Charge::Nothing)?)
}

/// [`documents`], for one render: every value parsed is also counted against `render`'s budget
/// (shared with the render's other inputs), and parsing stops at the first value over it.
pub fn documents_within(
    text: &str,
    limits: &Limits,
    render: &RenderBudget,
) -> Result<Vec<Value>, ParseError> {
    non_null(stream(text, limits, Charge::Built(render))?)
}

fn non_null(mut docs: Vec<Value>) -> Result<Vec<Value>, ParseError> {
    docs.retain(|doc| !doc.is_null());
    Ok(docs)
}

/// Every document of a YAML (or JSON) stream, empty ones as null, within `limits`, each value
/// also charged as `charge` says.
pub(crate) fn stream(
    text: &str,
    limits: &Limits,
    charge: Charge<'_>,
) -> Result<Vec<Value>, ParseError> {
    check_size(text, limits).map_err(ParseError::Limit)?;
    check_nesting(text, limits).map_err(ParseError::Limit)?;
    let budget = Budget::new(limits, charge);
    let mut docs = Vec::new();
    for (n, doc) in serde_yaml_ng::Deserializer::from_str(text).enumerate() {
        if n >= limits.documents {
            return Err(ParseError::Limit(LimitError::Documents {
                limit: limits.documents,
            }));
        }
        let value = Bounded {
            budget: &budget,
            depth: 0,
        }
        .deserialize(doc)
        .map_err(|e| match budget.exceeded.get() {
            Some(limit) => ParseError::Limit(limit),
            None => ParseError::Yaml(crate::parse::syntax(&e)),
        })?;
        docs.push(value);
    }
    Ok(docs)
}

/// Refuse YAML that exceeds `limits`, before it is deserialized into a typed structure (whose
/// deserializer would expand aliases without bound). YAML that does not parse passes: the typed
/// parse reports it, in its own terms.
pub fn check_yaml(text: &str, limits: &Limits) -> Result<(), LimitError> {
    match documents(text, limits) {
        Err(ParseError::Limit(e)) => Err(e),
        Ok(_) | Err(ParseError::Yaml(_)) => Ok(()),
    }
}

/// Refuse a value that exceeds `limits`. Walks without recursion, and stops at the first value
/// over a limit.
pub fn check(value: &Value, limits: &Limits) -> Result<(), LimitError> {
    check_all(std::iter::once(value), limits)
}

/// [`check`] for several documents sharing one budget.
pub fn check_all<'a>(
    values: impl IntoIterator<Item = &'a Value>,
    limits: &Limits,
) -> Result<(), LimitError> {
    measure(values, limits, Charge::Nothing).map(|_| ())
}

/// [`check_all`], also charging each value walked to a render's budget as `charge` says, and
/// returning what the values hold.
pub(crate) fn measure<'a>(
    values: impl IntoIterator<Item = &'a Value>,
    limits: &Limits,
    charge: Charge<'_>,
) -> Result<Size, LimitError> {
    let budget = Budget::new(limits, charge);
    let mut stack: Vec<(&Value, usize)> = values.into_iter().map(|v| (v, 0)).collect();
    while let Some((value, depth)) = stack.pop() {
        if depth > limits.depth {
            return Err(LimitError::Depth {
                limit: limits.depth,
            });
        }
        match value {
            Value::String(s) => budget.charge(s.len())?,
            Value::Array(items) => {
                budget.charge(0)?;
                stack.extend(items.iter().map(|v| (v, depth + 1)));
            }
            Value::Object(map) => {
                budget.charge(0)?;
                for (key, v) in map {
                    budget.charge(key.len())?;
                    stack.push((v, depth + 1));
                }
            }
            Value::Null | Value::Bool(_) | Value::Number(_) => budget.charge(0)?,
        }
    }
    Ok(Size {
        values: budget.values.get(),
        text_bytes: budget.text.get(),
    })
}

/// What is left to spend of one input's limits (and of the render's budget it is charged to),
/// and the limit that was hit, if any.
struct Budget<'r> {
    limits: Limits,
    values: Cell<usize>,
    text: Cell<usize>,
    exceeded: Cell<Option<LimitError>>,
    render: Charge<'r>,
}

impl<'r> Budget<'r> {
    fn new(limits: &Limits, render: Charge<'r>) -> Budget<'r> {
        Budget {
            limits: *limits,
            values: Cell::new(0),
            text: Cell::new(0),
            exceeded: Cell::new(None),
            render,
        }
    }

    /// Count one value holding `text` bytes of string.
    fn charge(&self, text: usize) -> Result<(), LimitError> {
        let values = self.values.get() + 1;
        let bytes = self.text.get().saturating_add(text);
        self.values.set(values);
        self.text.set(bytes);
        if values > self.limits.values {
            return self.exceed(LimitError::Values {
                limit: self.limits.values,
            });
        }
        if bytes > self.limits.text_bytes {
            return self.exceed(LimitError::TextBytes {
                limit: self.limits.text_bytes,
            });
        }
        let render = match self.render {
            Charge::Nothing => Ok(()),
            Charge::Built(render) => render.build(1, text),
            Charge::Steps(render) => render.step(1),
        };
        render.or_else(|e| self.exceed(e))
    }

    fn exceed(&self, e: LimitError) -> Result<(), LimitError> {
        self.exceeded.set(Some(e));
        Err(e)
    }
}

/// Deserializes one value as `serde_json::Value` does, charging the budget for each value.
struct Bounded<'a, 'r> {
    budget: &'a Budget<'r>,
    depth: usize,
}

impl<'r> Bounded<'_, 'r> {
    fn charge<E: de::Error>(&self, text: usize) -> Result<(), E> {
        self.budget.charge(text).map_err(E::custom)
    }

    /// The seed for a list item or mapping value, one level deeper.
    fn nested<E: de::Error>(&self) -> Result<Bounded<'_, 'r>, E> {
        let depth = self.depth + 1;
        if depth > self.budget.limits.depth {
            let e = LimitError::Depth {
                limit: self.budget.limits.depth,
            };
            self.budget.exceeded.set(Some(e));
            return Err(E::custom(e));
        }
        Ok(Bounded {
            budget: self.budget,
            depth,
        })
    }
}

impl<'de> DeserializeSeed<'de> for Bounded<'_, '_> {
    type Value = Value;

    fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<Value, D::Error> {
        deserializer.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for Bounded<'_, '_> {
    type Value = Value;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("any YAML value")
    }

    fn visit_bool<E: de::Error>(self, v: bool) -> Result<Value, E> {
        self.charge(0)?;
        Ok(Value::Bool(v))
    }

    fn visit_i64<E: de::Error>(self, v: i64) -> Result<Value, E> {
        self.charge(0)?;
        Ok(Value::Number(v.into()))
    }

    fn visit_u64<E: de::Error>(self, v: u64) -> Result<Value, E> {
        self.charge(0)?;
        Ok(Value::Number(v.into()))
    }

    fn visit_f64<E: de::Error>(self, v: f64) -> Result<Value, E> {
        self.charge(0)?;
        Ok(Number::from_f64(v).map_or(Value::Null, Value::Number))
    }

    fn visit_str<E: de::Error>(self, v: &str) -> Result<Value, E> {
        self.charge(v.len())?;
        Ok(Value::String(v.to_owned()))
    }

    fn visit_string<E: de::Error>(self, v: String) -> Result<Value, E> {
        self.charge(v.len())?;
        Ok(Value::String(v))
    }

    fn visit_none<E: de::Error>(self) -> Result<Value, E> {
        self.charge(0)?;
        Ok(Value::Null)
    }

    fn visit_unit<E: de::Error>(self) -> Result<Value, E> {
        self.visit_none()
    }

    fn visit_some<D: Deserializer<'de>>(self, deserializer: D) -> Result<Value, D::Error> {
        self.deserialize(deserializer)
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Value, A::Error> {
        self.charge(0)?;
        let mut items = Vec::new();
        while let Some(item) = seq.next_element_seed(self.nested()?)? {
            items.push(item);
        }
        Ok(Value::Array(items))
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Value, A::Error> {
        self.charge(0)?;
        let mut out = Map::new();
        while let Some(key) = map.next_key::<String>()? {
            self.charge(key.len())?;
            let value = map.next_value_seed(self.nested()?)?;
            out.insert(key, value);
        }
        Ok(Value::Object(out))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    /// A stream of anchors, each a list repeating the previous anchor `width` times, over a
    /// first list of `base` values: a few KB that expand to base × width^levels values. (A large
    /// base keeps the YAML parser's own limit on followed aliases, 100 per event, out of reach.)
    fn alias_bomb(base: usize, levels: usize, width: usize) -> String {
        let mut text = format!("a0: &a0 [{}]\n", vec!["x"; base].join(","));
        for level in 1..=levels {
            let refs = vec![format!("*a{}", level - 1); width].join(", ");
            text.push_str(&format!("a{level}: &a{level} [{refs}]\n"));
        }
        text
    }

    #[test]
    fn ordinary_yaml_parses_as_serde_json_would() {
        let text = "machine:\n  type: controlplane\n  port: 6443\n  ratio: 0.5\n  on: true\n  none: ~\n  list: [a, 1, {b: c}]\n---\n---\ncluster: {id: x}\n";
        let docs = documents(text, &LIMITS).unwrap();
        assert_eq!(
            docs,
            vec![
                json!({"machine": {"type": "controlplane", "port": 6443, "ratio": 0.5, "on": true, "none": null, "list": ["a", 1, {"b": "c"}]}}),
                json!({"cluster": {"id": "x"}}),
            ]
        );
        let anchors = documents("a: &x {k: v}\nb: *x\n", &LIMITS).unwrap();
        assert_eq!(anchors, vec![json!({"a": {"k": "v"}, "b": {"k": "v"}})]);
    }

    #[test]
    fn alias_expansion_is_bounded_by_values_and_text() {
        let bomb = alias_bomb(2000, 5, 10);
        assert!(bomb.len() < 5000, "{} bytes", bomb.len());
        match documents(&bomb, &LIMITS) {
            Err(ParseError::Limit(LimitError::Values { limit })) => assert_eq!(limit, 100_000),
            other => panic!("{other:?}"),
        }
        // Few values but long strings: the text budget.
        let long = format!(
            "s: &s \"{}\"\nl: [{}]\n",
            "x".repeat(100_000),
            vec!["*s"; 64].join(",")
        );
        assert!(matches!(
            documents(&long, &LIMITS),
            Err(ParseError::Limit(LimitError::TextBytes { .. }))
        ));
        assert_eq!(
            check_yaml(&bomb, &LIMITS),
            Err(LimitError::Values { limit: 100_000 })
        );
    }

    #[test]
    fn depth_documents_and_size_are_bounded() {
        let deep = format!("{}1{}", "[".repeat(65), "]".repeat(65));
        assert!(matches!(
            documents(&deep, &LIMITS),
            Err(ParseError::Limit(LimitError::Depth { limit: 64 }))
        ));
        let ok = format!("{}1{}", "[".repeat(64), "]".repeat(64));
        assert_eq!(documents(&ok, &LIMITS).unwrap().len(), 1);
        // Far deeper than the parser should ever see: refused before parsing.
        let deepest = format!("{}x{}", "{a: ".repeat(150_000), "}".repeat(150_000));
        assert!(matches!(
            documents(&deepest, &LIMITS),
            Err(ParseError::Limit(LimitError::Depth { limit: 64 }))
        ));
        // Brackets inside strings are text; closing brackets inside strings hide nothing.
        let brackets = format!("a: \"{}\"\n", "[".repeat(1000));
        assert_eq!(documents(&brackets, &LIMITS).unwrap().len(), 1);
        // Text the streaming parser cannot read: every opening bracket counts.
        let unreadable = format!("a: b\n c: {}", "[".repeat(2000));
        assert!(matches!(
            documents(&unreadable, &LIMITS),
            Err(ParseError::Limit(LimitError::Depth { limit: 64 }))
        ));
        assert!(matches!(
            documents("a: b\n c: [[", &LIMITS),
            Err(ParseError::Yaml(_))
        ));
        let quoted_closers = format!("{}x", "[']', ".repeat(100_000));
        assert!(matches!(
            documents(&quoted_closers, &LIMITS),
            Err(ParseError::Limit(LimitError::Depth { limit: 64 }))
        ));
        // More nodes than values, refused before a value is built; at the limit, parsed.
        let wide = |n: usize| format!("[{}]", vec!["0"; n].join(","));
        assert!(matches!(
            check_nesting(&wide(100_000), &LIMITS),
            Err(LimitError::Values { limit: 100_000 })
        ));
        assert_eq!(documents(&wide(99_999), &LIMITS).unwrap().len(), 1);
        let keys = format!(
            "{{{}}}",
            (0..50_000)
                .map(|i| format!("k{i}: 0"))
                .collect::<Vec<_>>()
                .join(",")
        );
        assert!(matches!(
            check_nesting(&keys, &LIMITS),
            Err(LimitError::Values { limit: 100_000 })
        ));
        assert!(matches!(
            documents(&keys, &LIMITS),
            Err(ParseError::Limit(LimitError::Values { limit: 100_000 }))
        ));
        let many = "a: 1\n---\n".repeat(65);
        assert!(matches!(
            documents(&many, &LIMITS),
            Err(ParseError::Limit(LimitError::Documents { limit: 64 }))
        ));
        let big = "#".repeat(LIMITS.input_bytes + 1);
        assert!(matches!(
            documents(&big, &LIMITS),
            Err(ParseError::Limit(LimitError::InputBytes { .. }))
        ));
        // Syntax errors stay syntax errors, and check_yaml leaves them to the typed parse.
        assert!(matches!(
            documents("a: [", &LIMITS),
            Err(ParseError::Yaml(_))
        ));
        assert_eq!(check_yaml("a: [", &LIMITS), Ok(()));
    }

    #[test]
    fn check_walks_values_without_recursion() {
        let mut deep = json!(1);
        for _ in 0..100 {
            deep = json!([deep]);
        }
        assert_eq!(check(&deep, &LIMITS), Err(LimitError::Depth { limit: 64 }));
        let wide = Value::Array(vec![json!(0); 100_001]);
        assert_eq!(
            check(&wide, &LIMITS),
            Err(LimitError::Values { limit: 100_000 })
        );
        let text = json!({"k": "x".repeat(LIMITS.text_bytes)});
        assert_eq!(
            check(&text, &LIMITS),
            Err(LimitError::TextBytes {
                limit: LIMITS.text_bytes
            })
        );
        assert_eq!(check(&json!({"machine": {"a": [1, 2]}}), &LIMITS), Ok(()));
        let docs = [json!({"a": 1}), json!({"b": 2})];
        let tight = Limits {
            values: 3,
            ..LIMITS
        };
        assert_eq!(
            check_all(&docs, &tight),
            Err(LimitError::Values { limit: 3 })
        );
    }
}

//! Parse errors that never quote the input. The documents parsed here hold keys and tokens (a
//! secrets bundle, a talosconfig, a kubeconfig, a machine configuration), and their errors reach
//! the CLI's output and the conditions and Events of TalosConfigs and TalosControlPlanes, which
//! more people may read than may read Secrets.
//!
//! serde's messages quote what they did not expect (`invalid type: string "<token>", expected
//! struct TrustdInfo`, `unknown variant "<value>"`), and a YAML parser's may too (a `!!int` tag
//! on a token). So no message of the parsers is kept. A YAML syntax error is reported as its
//! problem, picked from the YAML parser's fixed list, and its position. A document that does not
//! have the shape of its type is read again, from the parsed tree, through a deserializer whose
//! error type records only what kind of value was found, what the type expected (the type's own
//! words), the path of the field at fault and its position: never a value, and never a mapping
//! key that is not one of the type's own field names.

use std::fmt;

use serde::de::{
    self, DeserializeOwned, DeserializeSeed, Deserializer, EnumAccess, IntoDeserializer, MapAccess,
    SeqAccess, Unexpected, VariantAccess, Visitor,
};
use serde_json::Value;

use crate::Error;
use crate::limits::{self, LIMITS};

/// Why text does not parse as the document expected.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum InputError {
    #[error("{0}")]
    Syntax(#[from] SyntaxError),
    #[error("{0}")]
    Shape(Box<ShapeError>),
    #[error("{count} YAML documents where one is expected")]
    Documents { count: usize },
}

impl From<ShapeError> for InputError {
    fn from(e: ShapeError) -> Self {
        InputError::Shape(Box::new(e))
    }
}

/// YAML that does not parse: the problem, from the YAML parser's fixed list of problems (never
/// its message, which may quote the input), and where it is.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("not valid YAML: {problem}{}", Position(*.line, *.column))]
pub struct SyntaxError {
    pub problem: &'static str,
    pub line: Option<usize>,
    pub column: Option<usize>,
}

/// A document that does not fit its type: the field at fault (`trustdinfo`, `certs.os.key`,
/// `contexts.*.endpoints[0]`; `*` stands for a mapping key of the input, which is never shown),
/// what is wrong, and where.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{}{problem}{}", Subject(.path), Position(*.line, *.column))]
pub struct ShapeError {
    pub path: String,
    pub problem: Problem,
    pub line: Option<usize>,
    pub column: Option<usize>,
}

/// What is wrong with a field. Holds kinds of values, the type's own words for what it expects,
/// and its own field and variant names; never a value of the input.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Problem {
    #[error("is {found}, expected {expected}")]
    WrongType {
        found: &'static str,
        expected: String,
    },
    #[error("has an invalid value ({found}), expected {expected}")]
    InvalidValue {
        found: &'static str,
        expected: String,
    },
    #[error("has {len} items, expected {expected}")]
    InvalidLength { len: usize, expected: String },
    #[error("is not one of the accepted values ({})", OneOf(.expected))]
    UnknownVariant { expected: &'static [&'static str] },
    #[error("has an unknown field (the known ones: {})", OneOf(.expected))]
    UnknownField { expected: &'static [&'static str] },
    #[error("is missing `{0}`")]
    MissingField(&'static str),
    #[error("has `{0}` more than once")]
    DuplicateField(&'static str),
    /// A check of the type's own refused the value; its message is not kept, as it may quote it.
    #[error("has a value that is not valid here")]
    Invalid,
    /// The YAML parser refused a document the tree reads: its message is not kept.
    #[error("cannot be read as expected")]
    Unreadable,
}

/// `field `a.b`` or `the document`.
struct Subject<'a>(&'a str);

impl fmt::Display for Subject<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.0 {
            "" => f.write_str("the document "),
            path => write!(f, "field `{path}` "),
        }
    }
}

/// ` (line 3, column 7)`, or nothing.
struct Position(Option<usize>, Option<usize>);

impl fmt::Display for Position {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match (self.0, self.1) {
            (Some(line), Some(column)) => write!(f, " (line {line}, column {column})"),
            (Some(line), None) => write!(f, " (line {line})"),
            _ => Ok(()),
        }
    }
}

/// `` `a`, `b` ``.
struct OneOf<'a>(&'a [&'static str]);

impl fmt::Display for OneOf<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.0.is_empty() {
            return f.write_str("none");
        }
        for (i, name) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str(", ")?;
            }
            write!(f, "`{name}`")?;
        }
        Ok(())
    }
}

/// The problems the YAML parser (libyaml) and its serde layer report, as they begin its messages.
/// A message that begins with none of them is reported as [`UNREADABLE`].
const PROBLEMS: &[&str] = &[
    "did not find expected key",
    "did not find expected node content",
    "did not find expected ',' or ']'",
    "did not find expected ',' or '}'",
    "did not find expected '-' indicator",
    "did not find expected <document start>",
    "did not find expected alphabetic or numeric character",
    "did not find expected hexadecimal number",
    "did not find expected tag URI",
    "did not find expected whitespace or line break",
    "did not find expected comment or line break",
    "did not find URI escaped octet",
    "could not find expected ':'",
    "mapping values are not allowed in this context",
    "mapping keys are not allowed in this context",
    "block sequence entries are not allowed in this context",
    "found unexpected end of stream",
    "found unexpected document indicator",
    "found unexpected ':'",
    "found character that cannot start any token",
    "found a tab character that violates indentation",
    "found a tab character where an indentation space is expected",
    "found unknown escape character",
    "found invalid Unicode character escape code",
    "found undefined tag handle",
    "found an indentation indicator equal to 0",
    "control characters are not allowed",
    "invalid Unicode character",
    "unknown anchor",
    "recursion limit exceeded",
    "repetition limit exceeded",
    "EOF while parsing a value",
];

/// What a YAML error that is not one of [`PROBLEMS`] is reported as.
pub const UNREADABLE: &str = "a node that cannot be read (such as a value that does not fit its tag, or a key that is not a string)";

/// A YAML parser's error as a [`SyntaxError`]: its problem if it is a known one, and its
/// position. Nothing of its message is kept.
pub fn syntax(e: &serde_yaml_ng::Error) -> SyntaxError {
    let message = e.to_string();
    let problem = PROBLEMS
        .iter()
        .find(|p| message.starts_with(*p))
        .copied()
        .unwrap_or(UNREADABLE);
    let location = e.location();
    SyntaxError {
        problem,
        line: location.as_ref().map(|l| l.line()),
        column: location.as_ref().map(|l| l.column()),
    }
}

/// Deserialize a typed structure from YAML (`what` names it in errors), refusing input over
/// [`LIMITS`] first. Errors never quote the input.
pub fn from_yaml<T: DeserializeOwned>(what: &str, text: &str) -> Result<T, Error> {
    let stream = match limits::stream(text, &LIMITS, limits::Charge::Nothing) {
        Err(limits::ParseError::Limit(source)) => {
            return Err(Error::Limit {
                what: what.to_owned(),
                source,
            });
        }
        Err(limits::ParseError::Yaml(e)) => Err(e),
        Ok(stream) => Ok(stream),
    };
    // The YAML parser reads the document into its type, as it always has (a string field takes
    // a tagged scalar, which the tree of values does not); only when it refuses is the text read
    // again, to say why.
    serde_yaml_ng::from_str(text).map_err(|refusal| Error::Parse {
        what: what.to_owned(),
        source: match stream {
            Err(syntax) => InputError::Syntax(syntax),
            Ok(stream) => explain::<T>(text, &stream, &refusal),
        },
    })
}

/// Why `text` (whose documents are `stream`) does not deserialize as `T`, which the YAML parser
/// refused with `refusal`.
fn explain<T: DeserializeOwned>(
    text: &str,
    stream: &[Value],
    refusal: &serde_yaml_ng::Error,
) -> InputError {
    let [doc] = stream else {
        return InputError::Documents {
            count: stream.len(),
        };
    };
    match from_tree::<T>(doc) {
        Err(raised) => {
            let (line, column) = locate(text, &raised.located()).unzip();
            raised.shape(line, column).into()
        }
        // The tree reads, where the YAML parser did not (the parser is stricter about a few
        // things, such as a struct written as a list): its position, and no more.
        Ok(_) => {
            let location = refusal.location();
            ShapeError {
                path: String::new(),
                problem: Problem::Unreadable,
                line: location.as_ref().map(|l| l.line()),
                column: location.as_ref().map(|l| l.column()),
            }
            .into()
        }
    }
}

/// Deserialize a typed structure from a parsed tree. Errors name the field, never a value.
pub fn from_value<T: DeserializeOwned>(value: &Value) -> Result<T, Box<ShapeError>> {
    from_tree(value).map_err(|raised| Box::new(raised.shape(None, None)))
}

fn from_tree<T: DeserializeOwned>(value: &Value) -> Result<T, Raised> {
    T::deserialize(Tree { value, step: None })
}

/// One step of a path. A mapping key the type reads as one of its field names is a `Field`, and
/// shown; any other (the keys of a map of names to values, say) is a `Key`, used to find the
/// position and never shown.
#[derive(Clone, Copy)]
enum Step<'v> {
    Field(&'v str),
    Key(&'v str),
    Index(usize),
}

#[derive(Clone)]
enum OwnedStep {
    Field(String),
    Key(String),
    Index(usize),
}

impl From<Step<'_>> for OwnedStep {
    fn from(step: Step<'_>) -> Self {
        match step {
            Step::Field(name) => OwnedStep::Field(name.to_owned()),
            Step::Key(key) => OwnedStep::Key(key.to_owned()),
            Step::Index(i) => OwnedStep::Index(i),
        }
    }
}

/// The error of the tree's deserializer: the problem, and the path to it, collected innermost
/// first as the error leaves each level. Never leaves this module but as a [`ShapeError`].
struct Raised {
    problem: Problem,
    /// The path, innermost step first.
    steps: Vec<OwnedStep>,
    /// The mapping key being read when the error was raised (an unknown field): its position is
    /// the error's.
    key: Option<OwnedStep>,
}

impl Raised {
    fn new(problem: Problem) -> Raised {
        Raised {
            problem,
            steps: Vec::new(),
            key: None,
        }
    }

    /// The error, leaving the level reached by `step`.
    fn within(mut self, step: Option<Step<'_>>) -> Raised {
        if let Some(step) = step {
            self.steps.push(step.into());
        }
        self
    }

    /// The path, outermost first, to the node at fault (the key being read, if any).
    fn located(&self) -> Vec<OwnedStep> {
        self.steps
            .iter()
            .rev()
            .chain(self.key.as_ref())
            .cloned()
            .collect()
    }

    fn shape(self, line: Option<usize>, column: Option<usize>) -> ShapeError {
        let mut path = String::new();
        for step in self.steps.iter().rev() {
            match step {
                OwnedStep::Index(i) => path.push_str(&format!("[{i}]")),
                OwnedStep::Field(name) | OwnedStep::Key(name) => {
                    if !path.is_empty() {
                        path.push('.');
                    }
                    match step {
                        OwnedStep::Field(_) => path.push_str(name),
                        _ => path.push('*'),
                    }
                }
            }
        }
        ShapeError {
            path,
            problem: self.problem,
            line,
            column,
        }
    }
}

/// The problem only: the steps may hold keys of the input.
impl fmt::Display for Raised {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(&self.problem, f)
    }
}

impl fmt::Debug for Raised {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Raised")
            .field("problem", &self.problem)
            .finish_non_exhaustive()
    }
}

impl std::error::Error for Raised {}

/// What kind of value `unexpected` is, without the value.
fn kind(unexpected: &Unexpected<'_>) -> &'static str {
    match unexpected {
        Unexpected::Bool(_) => "a boolean",
        Unexpected::Unsigned(_) | Unexpected::Signed(_) | Unexpected::Float(_) => "a number",
        Unexpected::Char(_) => "a character",
        Unexpected::Str(_) => "a string",
        Unexpected::Bytes(_) => "bytes",
        Unexpected::Unit => "null",
        Unexpected::Option => "an optional value",
        Unexpected::NewtypeStruct => "a newtype struct",
        Unexpected::Seq => "a list",
        Unexpected::Map => "a map",
        Unexpected::Enum => "an enum",
        Unexpected::UnitVariant
        | Unexpected::NewtypeVariant
        | Unexpected::TupleVariant
        | Unexpected::StructVariant => "an enum variant",
        Unexpected::Other(_) => "another kind of value",
    }
}

/// What the type expects, in its words; a Rust struct's name means nothing to whoever wrote
/// the YAML.
fn expected(exp: &dyn de::Expected) -> String {
    let text = exp.to_string();
    match text.starts_with("struct ") {
        true => "a map".to_owned(),
        false => text,
    }
}

impl de::Error for Raised {
    /// A message of the type's own: it may quote the value, so it is not kept.
    fn custom<M: fmt::Display>(_message: M) -> Self {
        Raised::new(Problem::Invalid)
    }

    fn invalid_type(unexpected: Unexpected<'_>, exp: &dyn de::Expected) -> Self {
        Raised::new(Problem::WrongType {
            found: kind(&unexpected),
            expected: expected(exp),
        })
    }

    fn invalid_value(unexpected: Unexpected<'_>, exp: &dyn de::Expected) -> Self {
        Raised::new(Problem::InvalidValue {
            found: kind(&unexpected),
            expected: expected(exp),
        })
    }

    fn invalid_length(len: usize, exp: &dyn de::Expected) -> Self {
        Raised::new(Problem::InvalidLength {
            len,
            expected: expected(exp),
        })
    }

    fn unknown_variant(_variant: &str, expected: &'static [&'static str]) -> Self {
        Raised::new(Problem::UnknownVariant { expected })
    }

    fn unknown_field(_field: &str, expected: &'static [&'static str]) -> Self {
        Raised::new(Problem::UnknownField { expected })
    }

    fn missing_field(field: &'static str) -> Self {
        Raised::new(Problem::MissingField(field))
    }

    fn duplicate_field(field: &'static str) -> Self {
        Raised::new(Problem::DuplicateField(field))
    }
}

/// A node of the tree, reached by `step` (`None` at the root).
struct Tree<'v> {
    value: &'v Value,
    step: Option<Step<'v>>,
}

impl<'v> Tree<'v> {
    fn unexpected(&self) -> Unexpected<'v> {
        match self.value {
            Value::Null => Unexpected::Unit,
            Value::Bool(b) => Unexpected::Bool(*b),
            Value::Number(_) => Unexpected::Other("a number"),
            Value::String(s) => Unexpected::Str(s),
            Value::Array(_) => Unexpected::Seq,
            Value::Object(_) => Unexpected::Map,
        }
    }

    fn any<'de, V: Visitor<'de>>(&self, visitor: V) -> Result<V::Value, Raised> {
        match self.value {
            Value::Null => visitor.visit_unit(),
            Value::Bool(b) => visitor.visit_bool(*b),
            Value::Number(n) => match (n.as_u64(), n.as_i64(), n.as_f64()) {
                (Some(u), _, _) => visitor.visit_u64(u),
                (None, Some(i), _) => visitor.visit_i64(i),
                (None, None, Some(f)) => visitor.visit_f64(f),
                (None, None, None) => Err(de::Error::invalid_type(
                    Unexpected::Other("a number"),
                    &visitor,
                )),
            },
            Value::String(s) => visitor.visit_str(s),
            Value::Array(items) => {
                let mut seq = Items {
                    items: items.iter().enumerate(),
                };
                let out = visitor.visit_seq(&mut seq)?;
                match seq.items.len() {
                    0 => Ok(out),
                    _ => Err(de::Error::invalid_length(
                        items.len(),
                        &"fewer items in the list",
                    )),
                }
            }
            Value::Object(map) => {
                let mut entries = Entries {
                    entries: map.iter(),
                    value: None,
                };
                let out = visitor.visit_map(&mut entries)?;
                match entries.entries.len() {
                    0 => Ok(out),
                    _ => Err(de::Error::invalid_length(
                        map.len(),
                        &"fewer entries in the map",
                    )),
                }
            }
        }
    }
}

macro_rules! leave_with_step {
    ($($method:ident),*) => {$(
        fn $method<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Raised> {
            self.any(visitor).map_err(|e| e.within(self.step))
        }
    )*};
}

impl<'de, 'v> Deserializer<'de> for Tree<'v> {
    type Error = Raised;

    leave_with_step!(
        deserialize_any,
        deserialize_bool,
        deserialize_i8,
        deserialize_i16,
        deserialize_i32,
        deserialize_i64,
        deserialize_i128,
        deserialize_u8,
        deserialize_u16,
        deserialize_u32,
        deserialize_u64,
        deserialize_u128,
        deserialize_f32,
        deserialize_f64,
        deserialize_char,
        deserialize_bytes,
        deserialize_byte_buf,
        deserialize_seq,
        deserialize_map
    );

    /// YAML reads a plain scalar as a string where a string is expected (`id: 12345`).
    fn deserialize_str<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Raised> {
        match self.value {
            Value::Number(n) => visitor.visit_str(&n.to_string()),
            Value::Bool(b) => visitor.visit_str(if *b { "true" } else { "false" }),
            _ => self.any(visitor),
        }
        .map_err(|e| e.within(self.step))
    }

    fn deserialize_string<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Raised> {
        self.deserialize_str(visitor)
    }

    fn deserialize_identifier<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Raised> {
        self.deserialize_str(visitor)
    }

    fn deserialize_option<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Raised> {
        let step = self.step;
        match self.value {
            Value::Null => visitor.visit_none(),
            _ => visitor.visit_some(Tree {
                value: self.value,
                step: None,
            }),
        }
        .map_err(|e| e.within(step))
    }

    fn deserialize_unit<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Raised> {
        match self.value {
            Value::Null => visitor.visit_unit(),
            _ => Err(de::Error::invalid_type(self.unexpected(), &visitor)),
        }
        .map_err(|e: Raised| e.within(self.step))
    }

    fn deserialize_unit_struct<V: Visitor<'de>>(
        self,
        _name: &'static str,
        visitor: V,
    ) -> Result<V::Value, Raised> {
        self.deserialize_unit(visitor)
    }

    fn deserialize_newtype_struct<V: Visitor<'de>>(
        self,
        _name: &'static str,
        visitor: V,
    ) -> Result<V::Value, Raised> {
        let step = self.step;
        visitor
            .visit_newtype_struct(Tree {
                value: self.value,
                step: None,
            })
            .map_err(|e| e.within(step))
    }

    fn deserialize_tuple<V: Visitor<'de>>(
        self,
        _len: usize,
        visitor: V,
    ) -> Result<V::Value, Raised> {
        self.deserialize_seq(visitor)
    }

    fn deserialize_tuple_struct<V: Visitor<'de>>(
        self,
        _name: &'static str,
        _len: usize,
        visitor: V,
    ) -> Result<V::Value, Raised> {
        self.deserialize_seq(visitor)
    }

    fn deserialize_struct<V: Visitor<'de>>(
        self,
        _name: &'static str,
        _fields: &'static [&'static str],
        visitor: V,
    ) -> Result<V::Value, Raised> {
        self.deserialize_map(visitor)
    }

    fn deserialize_enum<V: Visitor<'de>>(
        self,
        _name: &'static str,
        _variants: &'static [&'static str],
        visitor: V,
    ) -> Result<V::Value, Raised> {
        let (variant, value) = match self.value {
            Value::String(s) => (s.as_str(), None),
            Value::Object(map) if map.len() == 1 => match map.iter().next() {
                Some((k, v)) => (k.as_str(), Some(v)),
                None => return Err(Raised::new(Problem::Unreadable).within(self.step)),
            },
            _ => {
                return Err(de::Error::invalid_type(
                    self.unexpected(),
                    &"a string or a map with one entry",
                ))
                .map_err(|e: Raised| e.within(self.step));
            }
        };
        visitor
            .visit_enum(Variant { variant, value })
            .map_err(|e| e.within(self.step))
    }

    fn deserialize_ignored_any<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Raised> {
        visitor.visit_unit()
    }
}

/// The items of a list.
struct Items<'v> {
    items: std::iter::Enumerate<std::slice::Iter<'v, Value>>,
}

impl<'de, 'v> SeqAccess<'de> for Items<'v> {
    type Error = Raised;

    fn next_element_seed<S: DeserializeSeed<'de>>(
        &mut self,
        seed: S,
    ) -> Result<Option<S::Value>, Raised> {
        match self.items.next() {
            None => Ok(None),
            Some((i, value)) => seed
                .deserialize(Tree {
                    value,
                    step: Some(Step::Index(i)),
                })
                .map(Some),
        }
    }

    fn size_hint(&self) -> Option<usize> {
        Some(self.items.len())
    }
}

/// The entries of a map, and the value of the key just read, with the step that reaches it.
struct Entries<'v> {
    entries: serde_json::map::Iter<'v>,
    value: Option<(&'v Value, Step<'v>)>,
}

impl<'de, 'v> MapAccess<'de> for Entries<'v> {
    type Error = Raised;

    fn next_key_seed<S: DeserializeSeed<'de>>(
        &mut self,
        seed: S,
    ) -> Result<Option<S::Value>, Raised> {
        let Some((key, value)) = self.entries.next() else {
            return Ok(None);
        };
        let mut field = false;
        let read = seed.deserialize(Key {
            key,
            field: &mut field,
        });
        let step = match field {
            true => Step::Field(key),
            false => Step::Key(key),
        };
        self.value = Some((value, step));
        read.map(Some).map_err(|mut e| {
            e.key = Some(Step::Key(key).into());
            e
        })
    }

    fn next_value_seed<S: DeserializeSeed<'de>>(&mut self, seed: S) -> Result<S::Value, Raised> {
        match self.value.take() {
            Some((value, step)) => seed.deserialize(Tree {
                value,
                step: Some(step),
            }),
            None => Err(Raised::new(Problem::Unreadable)),
        }
    }

    fn size_hint(&self) -> Option<usize> {
        Some(self.entries.len())
    }
}

/// A mapping key. A type reads its field names as identifiers: `field` says whether this key was
/// read as one (and so may be shown in a path).
struct Key<'a, 'v> {
    key: &'v str,
    field: &'a mut bool,
}

impl<'de> Deserializer<'de> for Key<'_, '_> {
    type Error = Raised;

    fn deserialize_any<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Raised> {
        visitor.visit_str(self.key)
    }

    fn deserialize_identifier<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Raised> {
        *self.field = true;
        visitor.visit_str(self.key)
    }

    fn deserialize_enum<V: Visitor<'de>>(
        self,
        _name: &'static str,
        _variants: &'static [&'static str],
        visitor: V,
    ) -> Result<V::Value, Raised> {
        visitor.visit_enum(Variant {
            variant: self.key,
            value: None,
        })
    }

    fn deserialize_newtype_struct<V: Visitor<'de>>(
        self,
        _name: &'static str,
        visitor: V,
    ) -> Result<V::Value, Raised> {
        visitor.visit_newtype_struct(self)
    }

    serde::forward_to_deserialize_any! {
        bool i8 i16 i32 i64 i128 u8 u16 u32 u64 u128 f32 f64 char str string bytes byte_buf
        option unit unit_struct seq tuple tuple_struct map struct ignored_any
    }
}

/// An enum: its variant's name, and the value beside it (none for a unit variant).
struct Variant<'v> {
    variant: &'v str,
    value: Option<&'v Value>,
}

impl<'de, 'v> EnumAccess<'de> for Variant<'v> {
    type Error = Raised;
    type Variant = VariantValue<'v>;

    fn variant_seed<S: DeserializeSeed<'de>>(
        self,
        seed: S,
    ) -> Result<(S::Value, VariantValue<'v>), Raised> {
        let name: de::value::StrDeserializer<'_, Raised> = self.variant.into_deserializer();
        let read = seed.deserialize(name)?;
        Ok((
            read,
            VariantValue {
                value: self.value,
                step: Step::Field(self.variant),
            },
        ))
    }
}

/// The value of an enum's variant.
struct VariantValue<'v> {
    value: Option<&'v Value>,
    step: Step<'v>,
}

impl<'v> VariantValue<'v> {
    fn tree(&self, exp: &dyn de::Expected) -> Result<Tree<'v>, Raised> {
        match self.value {
            Some(value) => Ok(Tree {
                value,
                step: Some(self.step),
            }),
            None => Err(de::Error::invalid_type(Unexpected::UnitVariant, exp)),
        }
    }
}

impl<'de, 'v> VariantAccess<'de> for VariantValue<'v> {
    type Error = Raised;

    fn unit_variant(self) -> Result<(), Raised> {
        match self.value {
            None | Some(Value::Null) => Ok(()),
            Some(value) => Err(de::Error::invalid_type(
                Tree { value, step: None }.unexpected(),
                &"a unit variant",
            )),
        }
    }

    fn newtype_variant_seed<S: DeserializeSeed<'de>>(self, seed: S) -> Result<S::Value, Raised> {
        seed.deserialize(self.tree(&"a newtype variant")?)
    }

    fn tuple_variant<V: Visitor<'de>>(self, _len: usize, visitor: V) -> Result<V::Value, Raised> {
        self.tree(&"a tuple variant")?.deserialize_seq(visitor)
    }

    fn struct_variant<V: Visitor<'de>>(
        self,
        _fields: &'static [&'static str],
        visitor: V,
    ) -> Result<V::Value, Raised> {
        self.tree(&"a struct variant")?.deserialize_map(visitor)
    }
}

/// The line and column (1-based) of the node at `path` in the first document of `text`, or of
/// the deepest node on the way there that exists. `None` when the text does not parse.
fn locate(text: &str, path: &[OwnedStep]) -> Option<(usize, usize)> {
    use granit_parser::{Event, Parser};
    let mut events = Parser::new_from_str(text).map_while(Result::ok);
    events.find(|(e, _)| matches!(e, Event::DocumentStart(..)))?;
    let root = events.next()?;
    find(&mut events, root, path)
}

type Located<'t> = (granit_parser::Event<'t>, granit_parser::Span);

fn find<'t>(
    events: &mut impl Iterator<Item = Located<'t>>,
    (node, span): Located<'t>,
    path: &[OwnedStep],
) -> Option<(usize, usize)> {
    use granit_parser::Event;
    let here = Some((span.start.line(), span.start.col() + 1));
    let Some((step, rest)) = path.split_first() else {
        return here;
    };
    match (&node, step) {
        (Event::MappingStart(..), OwnedStep::Field(want) | OwnedStep::Key(want)) => loop {
            let key = events.next()?;
            match &key.0 {
                Event::MappingEnd => return here,
                Event::Scalar(k, ..) if k.as_ref() == want.as_str() => {
                    let value = events.next()?;
                    return find(events, value, rest);
                }
                _ => {
                    skip(events, &key.0)?;
                    let value = events.next()?;
                    skip(events, &value.0)?;
                }
            }
        },
        (Event::SequenceStart(..), OwnedStep::Index(want)) => {
            for i in 0.. {
                let item = events.next()?;
                if matches!(item.0, Event::SequenceEnd) {
                    return here;
                }
                if i == *want {
                    return find(events, item, rest);
                }
                skip(events, &item.0)?;
            }
            here
        }
        _ => here,
    }
}

/// Skip the rest of the node that `first` starts.
fn skip<'t>(
    events: &mut impl Iterator<Item = Located<'t>>,
    first: &granit_parser::Event<'t>,
) -> Option<()> {
    use granit_parser::Event;
    let mut depth = match first {
        Event::MappingStart(..) | Event::SequenceStart(..) => 1usize,
        _ => return Some(()),
    };
    while depth > 0 {
        match events.next()?.0 {
            Event::MappingStart(..) | Event::SequenceStart(..) => depth += 1,
            Event::MappingEnd | Event::SequenceEnd => depth -= 1,
            _ => {}
        }
    }
    Some(())
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use serde::Deserialize;

    use super::*;

    /// A token-shaped value that must never appear in an error.
    const SECRET: &str = "k3yk3y.0123456789abcdef";

    #[derive(Debug, Deserialize)]
    #[allow(dead_code)]
    struct Outer {
        inner: Inner,
        #[serde(default)]
        list: Vec<u8>,
        #[serde(default)]
        mode: Option<Mode>,
        #[serde(default)]
        names: BTreeMap<String, Inner>,
    }

    #[derive(Debug, Deserialize)]
    #[serde(deny_unknown_fields)]
    #[allow(dead_code)]
    struct Inner {
        token: String,
        #[serde(default)]
        flag: bool,
    }

    #[derive(Debug, Deserialize)]
    #[allow(dead_code)]
    enum Mode {
        Fast,
        Slow,
    }

    fn refused(yaml: &str) -> (String, InputError) {
        let serde_says = serde_yaml_ng::from_str::<Outer>(yaml)
            .map(drop)
            .expect_err("serde_yaml_ng refuses it too")
            .to_string();
        let err = match from_yaml::<Outer>("test document", yaml) {
            Err(Error::Parse { source, .. }) => source,
            other => panic!("{yaml}: {other:?}"),
        };
        for text in [err.to_string(), format!("{err:?}")] {
            assert!(!text.contains(SECRET), "{yaml}: {text}");
            assert!(!text.contains("k3yk3y"), "{yaml}: {text}");
        }
        (serde_says, err)
    }

    fn shape(err: InputError) -> ShapeError {
        match err {
            InputError::Shape(shape) => *shape,
            other => panic!("{other:?}"),
        }
    }

    /// serde's own messages quote the value; ours name the field, what was found, what was
    /// expected and where.
    #[test]
    fn wrong_shapes_name_the_field_and_never_the_value() {
        for (yaml, path, problem, line, quoted_by_serde) in [
            (
                format!("inner: {SECRET}\n"),
                "inner",
                Problem::WrongType {
                    found: "a string",
                    expected: "a map".into(),
                },
                (1, 8),
                true,
            ),
            (
                format!("inner:\n  token: x\n  flag: {SECRET}\n"),
                "inner.flag",
                Problem::WrongType {
                    found: "a string",
                    expected: "a boolean".into(),
                },
                (3, 9),
                true,
            ),
            (
                format!("inner: {{token: x}}\nmode: {SECRET}\n"),
                "mode",
                Problem::UnknownVariant {
                    expected: &["Fast", "Slow"],
                },
                (2, 7),
                true,
            ),
            (
                format!("inner: {{token: x}}\nnames:\n  {SECRET}: {SECRET}\n"),
                "names.*",
                Problem::WrongType {
                    found: "a string",
                    expected: "a map".into(),
                },
                (3, 28),
                true,
            ),
            (
                format!("inner: {{token: x}}\nlist: [1, {SECRET}]\n"),
                "list[1]",
                Problem::WrongType {
                    found: "a string",
                    expected: "u8".into(),
                },
                (2, 11),
                true,
            ),
            (
                format!("inner:\n  token: x\n  {SECRET}: 1\n"),
                "inner",
                Problem::UnknownField {
                    expected: &["token", "flag"],
                },
                (3, 28),
                true,
            ),
            (
                "inner: {token: x}\nlist: [1, 300]\n".to_owned(),
                "list[1]",
                Problem::InvalidValue {
                    found: "a number",
                    expected: "u8".into(),
                },
                (2, 11),
                false,
            ),
            (
                "inner: {flag: true}\n".to_owned(),
                "inner",
                Problem::MissingField("token"),
                (1, 8),
                false,
            ),
        ] {
            let (serde_says, err) = refused(&yaml);
            assert_eq!(
                serde_says.contains(SECRET),
                quoted_by_serde,
                "{yaml}: {serde_says}"
            );
            let shape = shape(err);
            assert_eq!(shape.path, path, "{yaml}");
            assert_eq!(shape.problem, problem, "{yaml}");
            assert_eq!(
                (shape.line, shape.column),
                (Some(line.0), Some(line.1)),
                "{yaml}"
            );
        }
        let (_, err) = refused(&format!("inner: {SECRET}\n"));
        assert_eq!(
            err.to_string(),
            "field `inner` is a string, expected a map (line 1, column 8)"
        );
        let (_, err) = refused(&format!("inner: {{token: x}}\nmode: {SECRET}\n"));
        assert_eq!(
            err.to_string(),
            "field `mode` is not one of the accepted values (`Fast`, `Slow`) (line 2, column 7)"
        );
        let (_, err) = refused(&format!("{SECRET}\n"));
        assert_eq!(
            err.to_string(),
            "the document is a string, expected a map (line 1, column 1)"
        );
    }

    /// A tag that does not fit its value makes serde_yaml_ng quote the value; a syntax error is
    /// its problem and position.
    #[test]
    fn syntax_errors_name_the_problem_and_never_the_value() {
        let yaml = format!("inner:\n  token: !!int {SECRET}\n");
        let serde_says = serde_yaml_ng::from_str::<Value>(&yaml)
            .expect_err("a tag that does not fit")
            .to_string();
        assert!(serde_says.contains(SECRET), "{serde_says}");
        let err = limits::documents(&yaml, &LIMITS).unwrap_err();
        assert_eq!(
            err,
            limits::ParseError::Yaml(SyntaxError {
                problem: UNREADABLE,
                line: Some(2),
                column: Some(10),
            })
        );
        for text in [err.to_string(), format!("{err:?}")] {
            assert!(!text.contains(SECRET), "{text}");
        }
        // A quoted token left open in the middle of a document.
        let (_, err) = refused(&format!("inner:\n  token: \"{SECRET}\n  flag: true\n"));
        assert_eq!(
            err,
            InputError::Syntax(SyntaxError {
                problem: "found unexpected end of stream",
                line: Some(4),
                column: Some(1),
            })
        );
        assert_eq!(
            err.to_string(),
            "not valid YAML: found unexpected end of stream (line 4, column 1)"
        );
        let (_, err) = refused(&format!("inner:\n  token: {SECRET}\n flag: [\n"));
        assert!(
            matches!(err, InputError::Syntax(SyntaxError { problem, .. }) if PROBLEMS.contains(&problem)),
            "{err:?}"
        );
    }

    #[test]
    fn one_document_is_expected() {
        let (_, err) = refused(&format!(
            "inner: {{token: {SECRET}}}\n---\ninner: {{token: x}}\n"
        ));
        assert_eq!(err, InputError::Documents { count: 2 });
        let (_, err) = refused("");
        assert_eq!(err.to_string(), "the document is null, expected a map");
    }

    /// A tree built elsewhere (a configuration document after patches) has no positions.
    #[test]
    fn trees_name_the_field() {
        let value = serde_json::json!({"inner": {"token": ["x"]}, "names": {SECRET: {"token": 5}}});
        let err = from_value::<Outer>(&value).unwrap_err();
        assert_eq!(err.path, "inner.token");
        assert_eq!(
            err.to_string(),
            "field `inner.token` is a list, expected a string"
        );
        let value = serde_json::json!({"inner": {"token": "x"}, "names": {SECRET: SECRET}});
        let err = from_value::<Outer>(&value).unwrap_err();
        assert!(!format!("{err} {err:?}").contains(SECRET), "{err:?}");
        assert_eq!(err.path, "names.*");
        // Numbers and booleans read as strings, as YAML reads them.
        let value = serde_json::json!({"inner": {"token": 12345}, "names": {"a": {"token": true}}});
        let outer = from_value::<Outer>(&value).unwrap();
        assert_eq!(outer.inner.token, "12345");
        assert_eq!(outer.names["a"].token, "true");
    }
}

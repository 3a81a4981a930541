use std::fmt;

use crate::patch::PatchError;

/// An underlying error kept as the cause of one of ours.
pub type BoxError = Box<dyn std::error::Error + Send + Sync + 'static>;

/// Everything the configuration engine can refuse. Messages never contain key material.
///
/// A variant with an underlying cause keeps it as its [`std::error::Error::source`] and also
/// names it in its message: the talos-capi CLI prints errors with `Display` alone, so each
/// message is complete on its own (a printer that also walks the source chain repeats it).
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("unsupported Talos version {0:?}: this provider renders contracts v1.10 to v1.14")]
    UnsupportedVersion(String),
    #[error("invalid Talos version {0:?}: expected v1.13 or v1.13.0")]
    InvalidVersion(String),
    #[error("control-plane endpoint {endpoint:?}: {reason}")]
    Endpoint {
        endpoint: String,
        reason: EndpointProblem,
    },
    #[error("invalid {field} {value:?}: {reason}")]
    Input {
        field: &'static str,
        value: String,
        reason: String,
    },
    /// A field of the secrets bundle, or a key of a CABPT Secret, is absent or empty.
    #[error("secrets bundle: {field} is missing")]
    BundleMissing { field: String },
    /// A field of the secrets bundle, or a key of a CABPT Secret, cannot be decoded. Names the
    /// field, never its content.
    #[error("secrets bundle: {field}: {source}")]
    BundleField {
        field: String,
        #[source]
        source: DecodeError,
    },
    /// A certificate and the key stored beside it are not a pair.
    #[error(
        "secrets bundle: {pair}.crt and {pair}.key do not belong together (the certificate's public key is not the key's)"
    )]
    BundleMismatch { pair: String },
    /// A CA certificate of the bundle (OS or Kubernetes) cannot be used to sign client
    /// certificates.
    #[error("secrets bundle: unreadable {ca} CA certificate: {source}")]
    CaCertificate {
        ca: &'static str,
        #[source]
        source: rcgen::Error,
    },
    /// A CA private key cannot be loaded for signing.
    #[error("secrets bundle: unreadable CA key: {source}")]
    CaKey {
        #[source]
        source: BoxError,
    },
    #[error("generating keys or certificates: {0}")]
    Crypto(#[source] BoxError),
    /// YAML that does not parse or does not have the expected shape. Names the field and the
    /// position, never the content (see [`crate::parse`]).
    #[error("parsing {what}: {source}")]
    Parse {
        what: String,
        #[source]
        source: crate::parse::InputError,
    },
    /// Input over a size, depth or expansion limit (see [`crate::limits`]).
    #[error("{what}: {source}")]
    Limit {
        what: String,
        #[source]
        source: crate::limits::LimitError,
    },
    #[error("serializing {what}: {source}")]
    Serialize {
        what: &'static str,
        #[source]
        source: serde_yaml_ng::Error,
    },
    /// A configuration document that does not fit its typed model. Names the field, never its
    /// content.
    #[error("{kind} document: {source}")]
    Document {
        kind: &'static str,
        #[source]
        source: Box<crate::parse::ShapeError>,
    },
    /// A typed document that does not encode (never seen: every field encodes).
    #[error("encoding the {kind} document: {source}")]
    Encode {
        kind: &'static str,
        #[source]
        source: serde_json::Error,
    },
    /// A patch refused when it is parsed (`index` is `None`) or when the `index`th patch of
    /// [`crate::patch::apply`] is applied.
    #[error("{}: {source}", patch_label(.index))]
    Patch {
        index: Option<usize>,
        #[source]
        source: PatchError,
    },
    #[error("JSON6902 patches are not supported for multi-document machine configuration")]
    JsonPatchOnMultiDocument,
    #[error("the configuration is invalid:\n{0}")]
    Invalid(Problems),
}

fn patch_label(index: &Option<usize>) -> String {
    match *index {
        Some(i) => format!("patch {i}"),
        None => "parsing patch".to_owned(),
    }
}

impl Error {
    /// Whether this error is about a patch (parsing or applying one), as opposed to the
    /// configuration it patches or the inputs it is rendered from.
    pub fn is_patch_error(&self) -> bool {
        matches!(self, Error::Patch { .. } | Error::JsonPatchOnMultiDocument)
    }
}

impl From<rcgen::Error> for Error {
    fn from(e: rcgen::Error) -> Self {
        Error::Crypto(Box::new(e))
    }
}

/// Why a control-plane endpoint is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EndpointProblem {
    #[error("looks like a Markdown link; pass just {target}")]
    MarkdownLink { target: String },
    #[error("must start with https:// (for example https://10.0.0.1:6443)")]
    NotHttps,
    #[error("must not contain a path")]
    HasPath,
    #[error("must include a port (for example https://10.0.0.1:6443)")]
    NoPort,
    #[error("port must be a number from 1 to 65535, not {port:?}")]
    InvalidPort { port: String },
    #[error("host is empty")]
    EmptyHost,
}

/// Why a field holding encoded material (base64, PEM, UTF-8 text) cannot be read. Carries
/// positions, never content: these fields hold keys. (The base64 decoder's own error names the
/// offending byte, which may be part of a key, so it is not kept.)
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    #[error("not base64-encoded (invalid character at offset {offset})")]
    Base64Character { offset: usize },
    #[error("not base64-encoded (invalid final character at offset {offset})")]
    Base64LastCharacter { offset: usize },
    #[error("not base64-encoded (invalid length)")]
    Base64Length,
    #[error("not base64-encoded (invalid padding)")]
    Base64Padding,
    #[error("not UTF-8 text: {0}")]
    Utf8(#[source] std::str::Utf8Error),
    #[error("not PEM (no -----BEGIN block)")]
    NoPemBlock,
    #[error("not PEM (the block's -----END line is missing or names another label)")]
    UnterminatedPem,
    #[error(
        "not a Kubernetes bootstrap token (six and sixteen lowercase letters or digits, joined by a dot)"
    )]
    BootstrapToken,
    #[error("a {bytes}-byte key, which the encryption provider does not take")]
    KeyLength { bytes: usize },
    #[error("not a readable X.509 certificate")]
    Certificate,
    #[error("not a private key Talos can use ({label} block)")]
    PrivateKey { label: String },
}

impl From<base64::DecodeError> for DecodeError {
    fn from(e: base64::DecodeError) -> Self {
        match e {
            base64::DecodeError::InvalidByte(offset, _) => DecodeError::Base64Character { offset },
            base64::DecodeError::InvalidLastSymbol(offset, _) => {
                DecodeError::Base64LastCharacter { offset }
            }
            base64::DecodeError::InvalidLength(_) => DecodeError::Base64Length,
            base64::DecodeError::InvalidPadding => DecodeError::Base64Padding,
        }
    }
}

/// A list of validation problems, printed one per line.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Problems(pub Vec<crate::validate::Problem>);

impl Problems {
    /// The problems on one line, separated by `sep`.
    pub fn joined(&self, sep: &str) -> String {
        let list: Vec<String> = self.0.iter().map(ToString::to_string).collect();
        list.join(sep)
    }
}

impl fmt::Display for Problems {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, p) in self.0.iter().enumerate() {
            if i > 0 {
                writeln!(f)?;
            }
            write!(f, "  * {p}")?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use std::error::Error as _;

    use super::*;

    #[test]
    fn base64_errors_keep_the_position_but_not_the_byte() {
        use base64::Engine;
        // 'B' is a valid base64 character (a possible key byte) that cannot end the input.
        let e = base64::engine::general_purpose::STANDARD
            .decode("AB==")
            .unwrap_err();
        assert_eq!(e, base64::DecodeError::InvalidLastSymbol(1, b'B'));
        let ours = DecodeError::from(e);
        assert_eq!(ours, DecodeError::Base64LastCharacter { offset: 1 });
        let text = ours.to_string();
        assert!(!text.contains('B') && !text.contains("66"), "{text}");
        let e = base64::engine::general_purpose::STANDARD
            .decode("ab*d")
            .unwrap_err();
        assert_eq!(
            DecodeError::from(e),
            DecodeError::Base64Character { offset: 2 }
        );
    }

    #[test]
    fn causes_are_kept_as_sources() {
        let syntax = crate::parse::syntax(&serde_yaml_ng::from_str::<u8>("[").unwrap_err());
        let e = Error::Parse {
            what: "x".into(),
            source: syntax.clone().into(),
        };
        assert_eq!(e.to_string(), format!("parsing x: {syntax}"));
        let source = e.source().expect("the YAML error is the source");
        assert!(source.downcast_ref::<crate::parse::InputError>().is_some());

        let e = Error::from(rcgen::Error::CouldNotParseKeyPair);
        assert!(
            e.source()
                .and_then(|s| s.downcast_ref::<rcgen::Error>())
                .is_some(),
            "{e:?}"
        );
        assert!(
            e.to_string()
                .starts_with("generating keys or certificates: ")
        );
    }
}

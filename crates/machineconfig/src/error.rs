use std::fmt;

/// Everything the configuration engine can refuse. Messages never contain key material.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("unsupported Talos version {0:?}: this provider renders contracts v1.10 to v1.13")]
    UnsupportedVersion(String),
    #[error("invalid Talos version {0:?}: expected v1.13 or v1.13.0")]
    InvalidVersion(String),
    #[error("control-plane endpoint {endpoint:?}: {reason}")]
    Endpoint { endpoint: String, reason: String },
    #[error("invalid {field} {value:?}: {reason}")]
    Input {
        field: &'static str,
        value: String,
        reason: String,
    },
    #[error("secrets bundle: {0}")]
    Bundle(String),
    #[error("generating keys or certificates: {0}")]
    Crypto(String),
    #[error("parsing {what}: {message}")]
    Parse { what: String, message: String },
    #[error("patch {index}: {message}")]
    Patch { index: usize, message: String },
    #[error("JSON6902 patches are not supported for multi-document machine configuration")]
    JsonPatchOnMultiDocument,
    #[error("the configuration is invalid:\n{0}")]
    Invalid(Problems),
}

/// A list of validation problems, printed one per line.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Problems(pub Vec<crate::validate::Problem>);

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

impl From<rcgen::Error> for Error {
    fn from(e: rcgen::Error) -> Self {
        Error::Crypto(e.to_string())
    }
}

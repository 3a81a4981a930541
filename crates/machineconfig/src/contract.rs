//! Version contracts: which Talos release's configuration format to render.

use std::fmt;

use crate::Error;

/// A Talos minor release whose configuration format we render (`v1.13`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct Contract {
    pub major: u32,
    pub minor: u32,
}

impl Contract {
    pub const OLDEST: Contract = Contract {
        major: 1,
        minor: 10,
    };
    pub const NEWEST: Contract = Contract {
        major: 1,
        minor: 14,
    };
    /// The contract rendered when none is given. It stays v1.13 until the simulator and the
    /// controllers run v1.14 end to end (issue #29); then it becomes [`Contract::NEWEST`].
    pub const DEFAULT: Contract = Contract {
        major: 1,
        minor: 13,
    };

    /// Parse `v1.13`, `1.13`, `v1.13.0` or `v1.13.0-beta.1`; empty means [`Contract::DEFAULT`].
    pub fn parse(version: &str) -> Result<Contract, Error> {
        let v = version.trim();
        if v.is_empty() {
            return Ok(Self::DEFAULT);
        }
        let bare = v.strip_prefix('v').unwrap_or(v);
        let core = bare.split(['-', '+']).next().unwrap_or(bare);
        let mut parts = core.split('.');
        let num = |p: Option<&str>| -> Result<u32, Error> {
            p.and_then(|s| s.parse().ok())
                .ok_or_else(|| Error::InvalidVersion(version.to_owned()))
        };
        let major = num(parts.next())?;
        let minor = num(parts.next())?;
        if let Some(patch) = parts.next() {
            num(Some(patch))?;
        }
        if parts.next().is_some() {
            return Err(Error::InvalidVersion(version.to_owned()));
        }
        let c = Contract { major, minor };
        if c < Self::OLDEST || c > Self::NEWEST {
            return Err(Error::UnsupportedVersion(version.to_owned()));
        }
        Ok(c)
    }

    pub fn at_least(self, major: u32, minor: u32) -> bool {
        self >= Contract { major, minor }
    }

    /// Every contract we render, oldest first.
    pub fn all() -> impl Iterator<Item = Contract> {
        (Self::OLDEST.minor..=Self::NEWEST.minor).map(|minor| Contract { major: 1, minor })
    }
}

impl fmt::Display for Contract {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "v{}.{}", self.major, self.minor)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_what_users_write() {
        for v in ["v1.13", "1.13", "v1.13.0", "v1.13.2-beta.1", ""] {
            assert_eq!(Contract::parse(v).unwrap(), Contract::DEFAULT, "{v}");
        }
        for v in ["v1.14", "v1.14.1"] {
            assert_eq!(Contract::parse(v).unwrap(), Contract::NEWEST, "{v}");
        }
        assert_eq!(Contract::parse("v1.10.7").unwrap(), Contract::OLDEST);
    }

    #[test]
    fn refuses_unknown_and_malformed() {
        assert!(matches!(
            Contract::parse("v1.7.0"),
            Err(Error::UnsupportedVersion(_))
        ));
        assert!(matches!(
            Contract::parse("v1.99"),
            Err(Error::UnsupportedVersion(_))
        ));
        for v in ["latest", "v1", "v1.x", "v1.13.0.1"] {
            assert!(
                matches!(Contract::parse(v), Err(Error::InvalidVersion(_))),
                "{v}"
            );
        }
    }
}

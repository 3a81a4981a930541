//! The Kubernetes endpoint of a KubeClusterConfig document as Talos v1.14 reads it: Go's
//! `url.Parse` while decoding (a failure refuses the whole document), then
//! `sideronet.ValidateEndpointURI` (the host must not be blank, the port must be 1 to 65535).
//! Any scheme is accepted, as talosctl does.

/// Why Talos refuses an endpoint.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum EndpointProblem {
    /// `url.Parse` fails: the document does not decode. Talos's words, quoting the endpoint.
    Decode(String),
    /// `ValidateEndpointURI` refuses it. Talos's words.
    Invalid(&'static str),
}

/// Why Go's `url.Parse` refuses a URL, in its words.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
enum UrlError {
    #[error("missing protocol scheme")]
    MissingScheme,
    #[error("missing ']' in host")]
    MissingBracket,
    #[error("invalid port {0:?} after host")]
    InvalidPort(String),
    #[error("net/url: invalid control character in URL")]
    ControlCharacter,
    #[error("first path segment in URL cannot contain colon")]
    ColonInFirstSegment,
}

/// The scheme of `url` and what follows it, as Go's `getScheme` splits them.
fn split_scheme(url: &str) -> Result<(&str, &str), UrlError> {
    for (i, c) in url.char_indices() {
        match c {
            'a'..='z' | 'A'..='Z' => {}
            '0'..='9' | '+' | '-' | '.' if i > 0 => {}
            ':' if i == 0 => return Err(UrlError::MissingScheme),
            ':' => return Ok((&url[..i], &url[i + 1..])),
            _ => break,
        }
    }
    Ok(("", url))
}

/// Whether `port` (with its leading ':') is one Go's `validOptionalPort` accepts.
fn valid_optional_port(port: &str) -> bool {
    port.strip_prefix(':')
        .is_some_and(|digits| digits.bytes().all(|b| b.is_ascii_digit()))
}

/// The host and port of an authority (user information removed), as Go's `parseHost` checks it.
fn host_and_port(authority: &str) -> Result<(&str, &str), UrlError> {
    let host = authority.rsplit_once('@').map_or(authority, |(_, h)| h);
    if let Some(rest) = host.strip_prefix('[') {
        let Some(close) = rest.find(']') else {
            return Err(UrlError::MissingBracket);
        };
        let after = &rest[close + 1..];
        if !after.is_empty() && !valid_optional_port(after) {
            return Err(UrlError::InvalidPort(after.to_owned()));
        }
        return Ok((&rest[..close], after.strip_prefix(':').unwrap_or("")));
    }
    // Go checks from the first ':', so an unbracketed IPv6 address is refused.
    match host.find(':') {
        Some(i) if !valid_optional_port(&host[i..]) => {
            Err(UrlError::InvalidPort(host[i..].to_owned()))
        }
        Some(i) => Ok((&host[..i], &host[i + 1..])),
        None => Ok((host, "")),
    }
}

/// The host name and port Go's `url.Parse` finds in `url`, or its error.
fn parse(url: &str) -> Result<(&str, &str), UrlError> {
    let url = url.split_once('#').map_or(url, |(u, _)| u);
    if url.bytes().any(|b| b < 0x20 || b == 0x7f) {
        return Err(UrlError::ControlCharacter);
    }
    let (scheme, rest) = split_scheme(url)?;
    let rest = rest.split_once('?').map_or(rest, |(r, _)| r);
    if let Some(after) = rest.strip_prefix("//") {
        let end = after.find('/').unwrap_or(after.len());
        return host_and_port(&after[..end]);
    }
    let first_segment = rest.split('/').next().unwrap_or("");
    if scheme.is_empty() && first_segment.contains(':') {
        return Err(UrlError::ColonInFirstSegment);
    }
    Ok(("", ""))
}

/// What Talos v1.14 says of the endpoint `url` (non-empty), if it refuses it.
pub(super) fn check(url: &str) -> Option<EndpointProblem> {
    let (host, port) = match parse(url) {
        Ok(found) => found,
        Err(e) => return Some(EndpointProblem::Decode(format!("parse {url:?}: {e}"))),
    };
    if host.is_empty() {
        return Some(EndpointProblem::Invalid("hostname must not be blank"));
    }
    if port.is_empty() {
        return None;
    }
    match port.parse::<i64>() {
        Err(_) => Some(EndpointProblem::Invalid("port number must be numeric")),
        Ok(p) if !(1..=65535).contains(&p) => Some(EndpointProblem::Invalid(
            "port number must be between 1 and 65535",
        )),
        Ok(_) => None,
    }
}

#[cfg(test)]
mod tests {
    use super::{EndpointProblem, check};

    #[test]
    fn endpoints_as_talos_reads_them() {
        let invalid = |s| Some(EndpointProblem::Invalid(s));
        let decode = |s: &str| Some(EndpointProblem::Decode(s.to_owned()));
        assert_eq!(check("https://10.0.0.1:6443"), None);
        assert_eq!(check("ftp://example.com"), None);
        assert_eq!(check("https://[fd00::1]:6443/"), None);
        assert_eq!(check("https://user@example.com:443"), None);
        assert_eq!(check("example.com"), invalid("hostname must not be blank"));
        assert_eq!(
            check("https://:6443"),
            invalid("hostname must not be blank")
        );
        assert_eq!(
            check("https://example.com:70000"),
            invalid("port number must be between 1 and 65535")
        );
        assert_eq!(
            check("https://example.com:0"),
            invalid("port number must be between 1 and 65535")
        );
        assert_eq!(
            check("https://example.com:99999999999999999999"),
            invalid("port number must be numeric")
        );
        assert_eq!(
            check("10.0.0.1:6443"),
            decode("parse \"10.0.0.1:6443\": first path segment in URL cannot contain colon")
        );
        assert_eq!(
            check("https://example.com:x"),
            decode("parse \"https://example.com:x\": invalid port \":x\" after host")
        );
        assert_eq!(
            check("https://fd00::1:6443"),
            decode("parse \"https://fd00::1:6443\": invalid port \"::1:6443\" after host")
        );
        assert_eq!(
            check(":6443"),
            decode("parse \":6443\": missing protocol scheme")
        );
        assert_eq!(
            check("https://[fd00::1"),
            decode("parse \"https://[fd00::1\": missing ']' in host")
        );
    }

    #[test]
    fn a_long_endpoint_is_read_in_one_pass() {
        let long = format!("https://{}:6443", "a".repeat(1_000_000));
        assert_eq!(check(&long), None);
    }
}

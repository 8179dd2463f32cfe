//! [`redact_url`]: the form of an endpoint URL that may be written anywhere (records, exports, logs, errors).

/// `url` without user-info (`user:password@`), query (`?api_key=…`) or fragment: scheme, host, port and path
/// only. The client still sends requests to the real URL; every endpoint it reports (a [`crate::Completion`]'s
/// `endpoint`, errors, logs) and every description of the configured endpoints goes through this function, so a
/// credential given in `--model-url` is never recorded. Text without `://` is cut at its first `?` or `#` and
/// keeps only what follows its last `@` before the first `/`.
pub fn redact_url(url: &str) -> String {
    let (scheme, rest) = match url.find("://") {
        Some(index) => (&url[..index + 3], &url[index + 3..]),
        None => ("", url),
    };
    // Query and fragment go first: a `@` or `/` inside them is not part of the authority.
    let rest = match rest.find(['?', '#']) {
        Some(index) => &rest[..index],
        None => rest,
    };
    let (authority, path) = match rest.find('/') {
        Some(index) => rest.split_at(index),
        None => (rest, ""),
    };
    let host = match authority.rfind('@') {
        Some(index) => &authority[index + 1..],
        None => authority,
    };
    format!("{scheme}{host}{path}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn user_info_query_and_fragment_are_removed() {
        assert_eq!(
            redact_url("http://user:s3cret@host:8000/v1"),
            "http://host:8000/v1"
        );
        assert_eq!(redact_url("https://tok@host/v1/"), "https://host/v1/");
        assert_eq!(
            redact_url("http://host/v1?api_key=s3cret&x=1"),
            "http://host/v1"
        );
        assert_eq!(redact_url("http://host/v1#s3cret"), "http://host/v1");
        assert_eq!(redact_url("http://u:p@ss@host?key=a/b@c"), "http://host");
        assert_eq!(redact_url("host/v1?k=s3cret"), "host/v1");
    }

    #[test]
    fn a_url_without_credentials_is_unchanged() {
        for url in [
            "http://127.0.0.1:8000/v1",
            "https://models.internal/v1/",
            "http://[::1]:9000/v1",
            "http://host",
        ] {
            assert_eq!(redact_url(url), url);
        }
    }
}

//! Blob index tags: the `x-ms-tags` header of a commit, the body of Set Blob
//! Tags, and the checks the service applies to them. Tags are not encrypted
//! with the customer-provided key and a listing returns them
//! (`include=tags`), which is why cpkfs can keep a CPK file's attributes
//! there when the user opts in (docs/SEMANTICS.md).

use crate::models::Metadata;
use percent_encoding::{utf8_percent_encode, AsciiSet, NON_ALPHANUMERIC};

/// At most this many tags per blob.
pub const MAX_TAGS: usize = 10;
/// Key length 1..=128, value length 0..=256 (characters).
pub const MAX_KEY_LEN: usize = 128;
pub const MAX_VALUE_LEN: usize = 256;

/// Characters a tag key or value may hold besides ASCII letters and digits.
const ALLOWED_PUNCT: &[char] = &[' ', '+', '-', '.', '/', ':', '=', '_'];

/// Everything but letters, digits and `-._~` is percent-encoded in the
/// query-string form of `x-ms-tags` (a space as `%20`, `=` and `+` too, so
/// the pairs split unambiguously).
const QUERY: &AsciiSet = &NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'.')
    .remove(b'_')
    .remove(b'~');

/// Why a set of tags is not valid (the service answers 400 InvalidTag).
pub fn check(tags: &Metadata) -> Result<(), String> {
    if tags.len() > MAX_TAGS {
        return Err(format!("{} tags (at most {MAX_TAGS})", tags.len()));
    }
    let ok = |s: &str| {
        s.chars()
            .all(|c| c.is_ascii_alphanumeric() || ALLOWED_PUNCT.contains(&c))
    };
    for (k, v) in tags {
        if k.is_empty() || k.chars().count() > MAX_KEY_LEN || !ok(k) {
            return Err(format!("invalid tag key {k:?}"));
        }
        if v.chars().count() > MAX_VALUE_LEN || !ok(v) {
            return Err(format!("invalid value of tag {k:?}"));
        }
    }
    Ok(())
}

/// The `x-ms-tags` header value: `k1=v1&k2=v2`, percent-encoded.
pub fn header_value(tags: &Metadata) -> String {
    tags.iter()
        .map(|(k, v)| {
            format!(
                "{}={}",
                utf8_percent_encode(k, QUERY),
                utf8_percent_encode(v, QUERY)
            )
        })
        .collect::<Vec<_>>()
        .join("&")
}

/// The body of Set Blob Tags.
pub fn body(tags: &Metadata) -> String {
    use quick_xml::escape::escape;
    let mut s = String::from("<?xml version=\"1.0\" encoding=\"utf-8\"?><Tags><TagSet>");
    for (k, v) in tags {
        s.push_str(&format!(
            "<Tag><Key>{}</Key><Value>{}</Value></Tag>",
            escape(k.as_str()),
            escape(v.as_str())
        ));
    }
    s.push_str("</TagSet></Tags>");
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tags(pairs: &[(&str, &str)]) -> Metadata {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn header_value_is_a_percent_encoded_query_string() {
        let t = tags(&[("mode", "0644"), ("a b", "x=y+z/1:2")]);
        assert_eq!(header_value(&t), "a%20b=x%3Dy%2Bz%2F1%3A2&mode=0644");
        assert_eq!(header_value(&Metadata::new()), "");
    }

    #[test]
    fn check_applies_the_services_limits() {
        assert!(check(&tags(&[
            ("mtime", "1700000000.123456789"),
            ("mode", "0644")
        ]))
        .is_ok());
        assert!(
            check(&tags(&[("k", "")])).is_ok(),
            "empty values are allowed"
        );
        assert!(check(&tags(&[("", "v")])).is_err());
        assert!(check(&tags(&[("k", "a,b")])).is_err());
        assert!(check(&tags(&[("ké", "v")])).is_err());
        assert!(check(&tags(&[(&"k".repeat(129), "v")])).is_err());
        assert!(check(&tags(&[("k", &"v".repeat(257))])).is_err());
        let eleven: Metadata = (0..11).map(|i| (format!("k{i}"), "v".into())).collect();
        assert!(check(&eleven).is_err());
    }

    #[test]
    fn body_escapes_and_lists_every_tag() {
        let t = tags(&[("k", "a"), ("m", "")]);
        assert_eq!(
            body(&t),
            "<?xml version=\"1.0\" encoding=\"utf-8\"?><Tags><TagSet><Tag><Key>k</Key><Value>a</Value></Tag><Tag><Key>m</Key><Value></Value></Tag></TagSet></Tags>"
        );
    }
}

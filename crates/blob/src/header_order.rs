//! The Blob service's order for canonicalized header names.
//!
//! Azure does not sort `x-ms-*` names by bytes: it uses a culture-aware
//! comparison in which `_` sorts before digits and letters and `-` only breaks
//! ties. Signing in byte order gets 403 as soon as metadata names mix `_` with
//! letters or digits. This is a literal port of the two-level weight comparison
//! in the official SDKs (protocol reference §2.3).

use std::cmp::Ordering;

const fn build_w1() -> [u16; 128] {
    let mut t = [0u16; 128];
    t[b'!' as usize] = 0x71c;
    t[b'#' as usize] = 0x71f;
    t[b'$' as usize] = 0x721;
    t[b'%' as usize] = 0x723;
    t[b'&' as usize] = 0x725;
    t[b'*' as usize] = 0x72d;
    t[b'+' as usize] = 0x803;
    t[b'.' as usize] = 0x733;
    let digits = [
        0xd03, 0xd1a, 0xd1c, 0xd1e, 0xd20, 0xd22, 0xd24, 0xd26, 0xd28, 0xd2a,
    ];
    let mut i = 0;
    while i < 10 {
        t[b'0' as usize + i] = digits[i];
        i += 1;
    }
    t[b'^' as usize] = 0x743;
    t[b'_' as usize] = 0x744;
    t[b'`' as usize] = 0x748;
    t[b'|' as usize] = 0x74c;
    t[b'~' as usize] = 0x750;
    let letters = [
        0xe02, 0xe09, 0xe0a, 0xe1a, 0xe21, 0xe23, 0xe25, 0xe2c, 0xe32, 0xe35, 0xe36, 0xe48, 0xe51,
        0xe70, 0xe7c, 0xe7e, 0xe89, 0xe8a, 0xe91, 0xe99, 0xe9f, 0xea2, 0xea4, 0xea6, 0xea7, 0xea9,
    ];
    let mut j = 0;
    while j < 26 {
        t[b'a' as usize + j] = letters[j];
        t[b'A' as usize + j] = letters[j];
        j += 1;
    }
    t
}

const fn build_w2() -> [u16; 128] {
    let mut t = [0u16; 128];
    t[b'\'' as usize] = 0x8012;
    t[b'-' as usize] = 0x8212;
    t
}

static W1: [u16; 128] = build_w1();
static W2: [u16; 128] = build_w2();

fn weight(table: &[u16; 128], s: &[u8], i: usize) -> u16 {
    match s.get(i) {
        None => 1, // end-of-string marker
        Some(&c) if c < 128 => table[c as usize],
        Some(_) => 0,
    }
}

/// Compare two lower-cased header names the way the Blob service does.
pub fn service_header_cmp(a: &str, b: &str) -> Ordering {
    let (a, b) = (a.as_bytes(), b.as_bytes());
    let tables = [&W1, &W2];
    let (mut level, mut i, mut j) = (0usize, 0usize, 0usize);
    while level < 2 {
        if level == 1 && i != j {
            return if i > j {
                Ordering::Less
            } else {
                Ordering::Greater
            };
        }
        let wa = weight(tables[level], a, i);
        let wb = weight(tables[level], b, j);
        if wa == 1 && wb == 1 {
            level += 1;
            i = 0;
            j = 0;
        } else if wa == wb {
            i += 1;
            j += 1;
        } else if wa == 0 {
            i += 1;
        } else if wb == 0 {
            j += 1;
        } else {
            return wa.cmp(&wb);
        }
    }
    Ordering::Equal
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reference_order_vector() {
        let expected = [
            "x-ms-blob-type",
            "x-ms-client-request-id",
            "x-ms-date",
            "x-ms-meta-test",
            "x-ms-meta-test-",
            "x-ms-meta-test--",
            "x-ms-meta-test_-",
            "x-ms-meta-test-_",
            "x-ms-meta-test__",
            "x-ms-meta-test_a",
            "x-ms-meta-test_a-",
            "x-ms-meta-test-_a",
            "x-ms-meta-test_a_",
            "x-ms-meta-test_a-_",
            "x-ms-meta-test_z",
            "x-ms-meta-test-a",
            "x-ms-version",
        ];
        let mut v: Vec<&str> = expected.iter().rev().copied().collect();
        v.sort_by(|a, b| service_header_cmp(a, b));
        assert_eq!(v, expected);
        // And every adjacent pair is strictly ordered.
        for w in expected.windows(2) {
            assert_eq!(
                service_header_cmp(w[0], w[1]),
                Ordering::Less,
                "{} < {}",
                w[0],
                w[1]
            );
        }
    }

    #[test]
    fn underscore_before_digit_unlike_bytes() {
        assert_eq!(
            service_header_cmp("x-ms-meta-i_", "x-ms-meta-i0"),
            Ordering::Less
        );
        assert_eq!("x-ms-meta-i_".cmp("x-ms-meta-i0"), Ordering::Greater);
        assert_eq!(
            service_header_cmp("x-ms-meta-foo_bar", "x-ms-meta-foo2_bar"),
            Ordering::Less
        );
        assert_eq!(
            service_header_cmp("x-ms-date", "x-ms-date"),
            Ordering::Equal
        );
    }
}

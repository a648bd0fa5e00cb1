//! One page of List Blobs over the container's ordered map, in O(page): the
//! walk starts at max(marker, prefix), stops at the end of the prefix's range
//! or after `maxresults` items, and jumps over every name a delimiter rolls
//! into a `BlobPrefix` (a seek to the first name after the group) instead of
//! stepping through them. A page of a directory therefore costs the same in a
//! container of 10,000 blobs as in one of 1,000,000 (docs/PERFORMANCE.md).

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;

#[derive(Debug, PartialEq)]
pub enum ListItem<'a> {
    Blob(&'a str),
    Prefix(String),
}

/// One page of a listing. `from(start)` yields the visible names ≥ `start`
/// in order (a range over the ordered map, re-opened after each delimiter
/// group); `start` is max(marker, prefix). Returns the items and the name
/// to resume from (None: this was the last page).
pub fn list_page<'a, I>(
    mut from: impl FnMut(&str) -> I,
    start: &str,
    prefix: &str,
    delimiter: &str,
    max: usize,
) -> (Vec<ListItem<'a>>, Option<String>)
where
    I: Iterator<Item = &'a str>,
{
    let start = if start < prefix { prefix } else { start };
    let mut items = Vec::new();
    let mut names = from(start);
    while let Some(name) = names.next() {
        // Names ≥ prefix that do not start with it sort after all that do.
        if !name.starts_with(prefix) {
            break;
        }
        if items.len() >= max {
            return (items, Some(name.to_string()));
        }
        let rest = &name[prefix.len()..];
        if !delimiter.is_empty() {
            if let Some(pos) = rest.find(delimiter) {
                let group = format!("{prefix}{}", &rest[..pos + delimiter.len()]);
                // Skip the group's other names with one seek.
                let after = successor(&group);
                items.push(ListItem::Prefix(group));
                match after {
                    Some(a) => names = from(&a),
                    None => break,
                }
                continue;
            }
        }
        items.push(ListItem::Blob(name));
    }
    (items, None)
}

/// The least string greater than every string that starts with `p` (None if
/// there is none: `p` is all `char::MAX`). UTF-8 orders like code points, so
/// this is also the bound in the map's byte order.
fn successor(p: &str) -> Option<String> {
    let mut chars: Vec<char> = p.chars().collect();
    while let Some(c) = chars.pop() {
        // Surrogates are not chars: after U+D7FF comes U+E000.
        let next = if c == '\u{D7FF}' {
            Some('\u{E000}')
        } else {
            char::from_u32(c as u32 + 1)
        };
        if let Some(n) = next {
            chars.push(n);
            return Some(chars.into_iter().collect());
        }
    }
    None
}

/// The opaque `NextMarker` for resuming at `name`.
pub fn encode_marker(name: &str) -> String {
    format!("2!{}", URL_SAFE_NO_PAD.encode(name.as_bytes()))
}

pub fn decode_marker(m: &str) -> Option<String> {
    let b = m.strip_prefix("2!")?;
    String::from_utf8(URL_SAFE_NO_PAD.decode(b).ok()?).ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::cell::Cell;
    use std::collections::BTreeSet;
    use std::ops::Bound;

    /// A page over `names`, counting every name the walk looked at.
    fn page<'a>(
        names: &'a BTreeSet<String>,
        visited: &Cell<usize>,
        marker: &str,
        prefix: &str,
        delim: &str,
        max: usize,
    ) -> (Vec<ListItem<'a>>, Option<String>) {
        list_page(
            |s: &str| {
                names
                    .range::<str, _>((Bound::Included(s), Bound::Unbounded))
                    .map(|n| {
                        visited.set(visited.get() + 1);
                        n.as_str()
                    })
            },
            marker,
            prefix,
            delim,
            max,
        )
    }

    fn set(names: &[&str]) -> BTreeSet<String> {
        names.iter().map(|s| s.to_string()).collect()
    }

    fn text(i: ListItem) -> String {
        match i {
            ListItem::Blob(b) => b.to_string(),
            ListItem::Prefix(p) => p,
        }
    }

    /// Every page of a listing, following the markers.
    fn all_pages(names: &BTreeSet<String>, prefix: &str, delim: &str, max: usize) -> Vec<String> {
        let mut marker = String::new();
        let mut out = Vec::new();
        let visited = Cell::new(0);
        loop {
            let (items, next) = page(names, &visited, &marker, prefix, delim, max);
            assert!(items.len() <= max);
            out.extend(items.into_iter().map(text));
            match next {
                Some(n) => marker = n,
                None => return out,
            }
        }
    }

    /// What a listing must return, computed the slow and obvious way.
    fn reference(names: &BTreeSet<String>, prefix: &str, delim: &str) -> Vec<String> {
        let mut out: Vec<String> = Vec::new();
        for n in names.iter().filter(|n| n.starts_with(prefix)) {
            let rest = &n[prefix.len()..];
            let item = match rest.find(delim).filter(|_| !delim.is_empty()) {
                Some(pos) => format!("{prefix}{}", &rest[..pos + delim.len()]),
                None => n.clone(),
            };
            if out.last() != Some(&item) {
                out.push(item);
            }
        }
        out
    }

    #[test]
    fn prefixes_delimiters_and_paging() {
        let names = set(&[
            "a/1", "a/2", "a/b/1", "a/b/2", "a/c", "b", "c/x", "c/y", "d",
        ]);
        let v = Cell::new(0);
        let (items, next) = page(&names, &v, "", "", "/", 10);
        assert_eq!(
            items,
            vec![
                ListItem::Prefix("a/".into()),
                ListItem::Blob("b"),
                ListItem::Prefix("c/".into()),
                ListItem::Blob("d")
            ]
        );
        assert!(next.is_none());
        let (items, _) = page(&names, &v, "", "a/", "/", 10);
        assert_eq!(
            items,
            vec![
                ListItem::Blob("a/1"),
                ListItem::Blob("a/2"),
                ListItem::Prefix("a/b/".into()),
                ListItem::Blob("a/c")
            ]
        );
        // One result per page never repeats a prefix.
        assert_eq!(all_pages(&names, "", "/", 1), vec!["a/", "b", "c/", "d"]);
        // Flat pages.
        let (items, next) = page(&names, &v, "", "", "", 4);
        assert_eq!(items.len(), 4);
        assert_eq!(next.as_deref(), Some("a/c"));
        let (items, next) = page(&names, &v, "a/c", "", "", 100);
        assert_eq!(items.len(), 5);
        assert!(next.is_none());
        // A prefix without a delimiter stops after the prefix's range.
        let (items, _) = page(&names, &v, "", "c/", "", 100);
        assert_eq!(items, vec![ListItem::Blob("c/x"), ListItem::Blob("c/y")]);
        assert_eq!(decode_marker(&encode_marker("a/ü")).as_deref(), Some("a/ü"));
    }

    #[test]
    fn successor_bounds_every_name_of_the_group() {
        assert_eq!(successor("a/").as_deref(), Some("a0"));
        assert_eq!(successor("x\u{D7FF}").as_deref(), Some("x\u{E000}"));
        assert_eq!(
            successor(&format!("ab{}", char::MAX)).as_deref(),
            Some("ac")
        );
        assert_eq!(successor(&char::MAX.to_string()), None);
        // A group at the very end of the key space ends the listing.
        let names = set(&[&format!("{}/x", char::MAX), &format!("{}/y", char::MAX)]);
        let m = char::MAX.to_string();
        assert_eq!(all_pages(&names, "", &m, 10), vec![m.clone()]);
    }

    /// Many names with the characters that sort around the delimiter ('-',
    /// '.', '/', '0'), nested three deep; every prefix, delimiter and page
    /// size pages to exactly what the reference listing says.
    #[test]
    fn paging_matches_the_reference_over_many_blobs() {
        let parts = ["a", "a-", "a.", "a0", "ab", "b", "é"];
        let mut names = BTreeSet::new();
        for x in parts {
            names.insert(x.to_string());
            for y in parts {
                names.insert(format!("{x}/{y}"));
                for z in parts {
                    names.insert(format!("{x}/{y}/{z}"));
                    names.insert(format!("{x}{y}{z}"));
                }
            }
        }
        let mut prefixes: Vec<String> = vec![String::new(), "a".into(), "a/".into()];
        prefixes.extend(parts.iter().map(|p| format!("{p}/a")));
        prefixes.push("zz".into());
        for prefix in &prefixes {
            for delim in ["", "/", "a/", "-"] {
                let want = reference(&names, prefix, delim);
                for max in [1, 2, 3, 7, 5000] {
                    assert_eq!(
                        all_pages(&names, prefix, delim, max),
                        want,
                        "prefix {prefix:?} delimiter {delim:?} max {max}"
                    );
                }
            }
        }
    }

    /// The cost of a page is the page, not the container: with 100,000
    /// blobs inside one directory and 100,000 beside it, a page looks at
    /// about as many names as it returns, wherever it starts.
    #[test]
    fn a_page_looks_at_the_page_not_the_container() {
        let mut names = BTreeSet::new();
        for i in 0..100_000 {
            names.insert(format!("big/f{i:06}"));
            names.insert(format!("top{i:06}"));
        }
        names.insert("a".into());
        for (marker, prefix, delim, max) in [
            // The root: "big/" holds 100,000 names and rolls into one prefix.
            ("", "", "/", 10),
            // A page from a marker deep inside one directory.
            ("big/f050000", "big/", "/", 10),
            // The last page of the directory: stops at the end of the prefix.
            ("big/f099995", "big/", "/", 5000),
            // A flat listing of everything from the middle.
            ("top050000", "", "", 100),
        ] {
            let visited = Cell::new(0);
            let (items, _) = page(&names, &visited, marker, prefix, delim, max);
            assert!(!items.is_empty());
            assert!(
                visited.get() <= items.len() + 2,
                "{} names looked at for {} items ({marker:?}, {prefix:?})",
                visited.get(),
                items.len()
            );
        }
        let visited = Cell::new(0);
        let (items, next) = page(&names, &visited, "", "", "/", 3);
        assert_eq!(
            items,
            vec![
                ListItem::Blob("a"),
                ListItem::Prefix("big/".into()),
                ListItem::Blob("top000000")
            ]
        );
        assert_eq!(next.as_deref(), Some("top000001"));
    }
}

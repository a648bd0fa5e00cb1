//! XML bodies of the Blob service: List Blobs, Get Block List, errors, and the
//! Put Block List request body.

use super::models::{
    quote_etag, BlobItem, BlobProperties, BlockInfo, BlockList, BlockRef, ListPage,
};
use percent_encoding::percent_decode_str;
use quick_xml::events::Event;
use quick_xml::Reader;

/// A minimal element tree: the bodies are small (≤ 5000 entries) and a tree
/// keeps the extraction code obvious.
#[derive(Debug, Default)]
struct Elem {
    name: String,
    attrs: Vec<(String, String)>,
    text: String,
    children: Vec<Elem>,
}

impl Elem {
    fn child(&self, name: &str) -> Option<&Elem> {
        self.children.iter().find(|c| c.name == name)
    }
    fn text_of(&self, name: &str) -> Option<&str> {
        self.child(name)
            .map(|c| c.text.as_str())
            .filter(|t| !t.is_empty())
    }
    fn attr(&self, name: &str) -> Option<&str> {
        self.attrs
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }
}

fn parse_tree(xml: &[u8]) -> Result<Elem, String> {
    let mut reader = Reader::from_reader(xml);
    let mut stack: Vec<Elem> = vec![Elem::default()];
    let mut buf = Vec::new();
    loop {
        let ev = reader
            .read_event_into(&mut buf)
            .map_err(|e| e.to_string())?;
        match ev {
            Event::Start(e) => stack.push(elem_from(&e)?),
            Event::Empty(e) => {
                let el = elem_from(&e)?;
                stack.last_mut().unwrap().children.push(el);
            }
            Event::End(_) => {
                let el = stack.pop().ok_or("unbalanced XML")?;
                stack.last_mut().ok_or("unbalanced XML")?.children.push(el);
            }
            Event::Text(t) => {
                let s = t.unescape().map_err(|e| e.to_string())?;
                stack.last_mut().unwrap().text.push_str(&s);
            }
            Event::CData(c) => {
                stack
                    .last_mut()
                    .unwrap()
                    .text
                    .push_str(&String::from_utf8_lossy(&c));
            }
            Event::Eof => break,
            _ => {}
        }
        buf.clear();
    }
    if stack.len() != 1 {
        return Err("truncated XML document".into());
    }
    stack
        .pop()
        .unwrap()
        .children
        .into_iter()
        .next()
        .ok_or_else(|| "empty XML document".into())
}

fn elem_from(e: &quick_xml::events::BytesStart<'_>) -> Result<Elem, String> {
    let name = String::from_utf8_lossy(e.local_name().as_ref()).into_owned();
    let mut attrs = vec![];
    for a in e.attributes() {
        let a = a.map_err(|e| e.to_string())?;
        let k = String::from_utf8_lossy(a.key.local_name().as_ref()).into_owned();
        let v = a.unescape_value().map_err(|e| e.to_string())?.into_owned();
        attrs.push((k, v));
    }
    Ok(Elem {
        name,
        attrs,
        ..Default::default()
    })
}

fn http_date(s: Option<&str>) -> Option<std::time::SystemTime> {
    s.and_then(|v| httpdate::parse_http_date(v).ok())
}

fn decode_name(el: &Elem) -> String {
    if el.attr("Encoded") == Some("true") {
        percent_decode_str(&el.text)
            .decode_utf8_lossy()
            .into_owned()
    } else {
        el.text.clone()
    }
}

pub fn parse_list_blobs(xml: &[u8]) -> Result<ListPage, String> {
    let root = parse_tree(xml)?;
    if root.name != "EnumerationResults" {
        return Err(format!("expected EnumerationResults, got {}", root.name));
    }
    let mut page = ListPage {
        next_marker: root.text_of("NextMarker").map(str::to_string),
        ..Default::default()
    };
    let Some(blobs) = root.child("Blobs") else {
        return Ok(page);
    };
    for entry in &blobs.children {
        match entry.name.as_str() {
            "BlobPrefix" => {
                let n = entry.child("Name").ok_or("BlobPrefix without Name")?;
                page.prefixes.push(decode_name(n));
            }
            "Blob" => {
                let n = entry.child("Name").ok_or("Blob without Name")?;
                let mut props = BlobProperties::default();
                if let Some(p) = entry.child("Properties") {
                    props.content_length = p
                        .text_of("Content-Length")
                        .map(|v| v.parse::<u64>().map_err(|e| format!("Content-Length: {e}")))
                        .transpose()?
                        .unwrap_or(0);
                    props.etag = p.text_of("Etag").map(quote_etag).unwrap_or_default();
                    props.last_modified = http_date(p.text_of("Last-Modified"));
                    props.creation_time = http_date(p.text_of("Creation-Time"));
                    props.content_type = p.text_of("Content-Type").map(str::to_string);
                    props.content_md5 = p.text_of("Content-MD5").map(str::to_string);
                    props.cpk_sha256 = p.text_of("CustomerProvidedKeySha256").map(str::to_string);
                    props.server_encrypted = p.text_of("ServerEncrypted") == Some("true");
                    props.tag_count = p
                        .text_of("TagCount")
                        .and_then(|v| v.parse().ok())
                        .unwrap_or(0);
                }
                props.tags = entry.child("Tags").map(tag_set);
                if let Some(m) = entry.child("Metadata") {
                    if m.attr("Encrypted") == Some("true") {
                        props.metadata_encrypted = true;
                    }
                    for kv in &m.children {
                        props.metadata.insert(kv.name.clone(), kv.text.clone());
                    }
                }
                page.blobs.push(BlobItem {
                    name: decode_name(n),
                    properties: props,
                });
            }
            _ => {}
        }
    }
    Ok(page)
}

/// The `<TagSet>` of a `<Tags>` element (Get Blob Tags, or one blob of a
/// listing with `include=tags`).
fn tag_set(tags: &Elem) -> crate::models::Metadata {
    let mut out = crate::models::Metadata::new();
    if let Some(set) = tags.child("TagSet") {
        for t in set.children.iter().filter(|t| t.name == "Tag") {
            if let Some(k) = t.text_of("Key") {
                out.insert(k.to_string(), t.text_of("Value").unwrap_or("").into());
            }
        }
    }
    out
}

/// The body of Get Blob Tags.
pub fn parse_tags(xml: &[u8]) -> Result<crate::models::Metadata, String> {
    let root = parse_tree(xml)?;
    if root.name != "Tags" {
        return Err(format!("expected Tags, got {}", root.name));
    }
    Ok(tag_set(&root))
}

pub fn parse_block_list(xml: &[u8]) -> Result<BlockList, String> {
    let root = parse_tree(xml)?;
    if root.name != "BlockList" {
        return Err(format!("expected BlockList, got {}", root.name));
    }
    let blocks = |name: &str| -> Result<Vec<BlockInfo>, String> {
        let mut out = vec![];
        if let Some(list) = root.child(name) {
            for b in list.children.iter().filter(|c| c.name == "Block") {
                out.push(BlockInfo {
                    id: b.text_of("Name").ok_or("Block without Name")?.to_string(),
                    size: b
                        .text_of("Size")
                        .ok_or("Block without Size")?
                        .parse()
                        .map_err(|e| format!("Size: {e}"))?,
                });
            }
        }
        Ok(out)
    };
    Ok(BlockList {
        committed: blocks("CommittedBlocks")?,
        uncommitted: blocks("UncommittedBlocks")?,
        etag: None,
    })
}

/// `(code, message first line)` of an error body.
pub fn parse_error(xml: &[u8]) -> Option<(Option<String>, String)> {
    let root = parse_tree(xml).ok()?;
    if root.name != "Error" {
        return None;
    }
    let code = root.text_of("Code").map(str::to_string);
    let msg = root
        .text_of("Message")
        .unwrap_or("")
        .lines()
        .next()
        .unwrap_or("")
        .to_string();
    Some((code, msg))
}

/// True when an AuthenticationErrorDetail says the MAC did not match (as
/// opposed to a clock skew or a malformed header). The detail itself is never
/// kept or logged: it quotes the string-to-sign.
pub fn auth_detail_is_mac_mismatch(xml: &[u8]) -> bool {
    parse_tree(xml)
        .ok()
        .and_then(|r| {
            r.text_of("AuthenticationErrorDetail")
                .map(|d| d.contains("MAC signature") || d.contains("Signature did not match"))
        })
        .unwrap_or(false)
}

pub fn block_list_body(blocks: &[BlockRef]) -> String {
    let mut s = String::with_capacity(64 + blocks.len() * 48);
    s.push_str("<?xml version=\"1.0\" encoding=\"utf-8\"?><BlockList>");
    for b in blocks {
        let (tag, id) = match b {
            BlockRef::Committed(id) => ("Committed", id),
            BlockRef::Uncommitted(id) => ("Uncommitted", id),
            BlockRef::Latest(id) => ("Latest", id),
        };
        // Block ids are base64: no XML escaping is needed, but be safe.
        let id = quick_xml::escape::escape(id.as_str());
        s.push_str(&format!("<{tag}>{id}</{tag}>"));
    }
    s.push_str("</BlockList>");
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    const REAL_CPK_LISTING: &str = r#"<?xml version="1.0" encoding="utf-8"?><EnumerationResults ServiceEndpoint="https://myaccount.blob.core.windows.net/" ContainerName="mycontainer"><Prefix>a/</Prefix><MaxResults>2</MaxResults><Delimiter>/</Delimiter><Blobs><BlobPrefix><Name>a/b/</Name></BlobPrefix><Blob><Name>blockblob/0165899957958904339</Name><Properties>
  <Creation-Time>Thu, 28 Jul 2022 09:12:59 GMT</Creation-Time>
  <Last-Modified>Thu, 28 Jul 2022 09:12:59 GMT</Last-Modified>
  <Etag>0x8DA70795E20853E</Etag><Content-Length>0</Content-Length>
  <Content-Type>application/octet-stream</Content-Type><Content-Encoding /><Content-Language />
  <Content-CRC64 /><Content-MD5>1B2M2Y8AsgTpgAmY7PhCfg==</Content-MD5><Cache-Control />
  <Content-Disposition /><BlobType>BlockBlob</BlobType><AccessTier>Hot</AccessTier>
  <AccessTierInferred>true</AccessTierInferred><LeaseStatus>unlocked</LeaseStatus>
  <LeaseState>available</LeaseState><ServerEncrypted>true</ServerEncrypted>
  <CustomerProvidedKeySha256>3QFFFpRA5+XANHqwwbT4yXDmrT/2JaLt/FKHjzhOdoE=</CustomerProvidedKeySha256>
</Properties><Metadata Encrypted="true" /><OrMetadata /></Blob><Blob><Name Encoded="true">a/%EF%BF%BE.txt</Name><Properties><Etag>0x1</Etag><Content-Length>4</Content-Length><SomeFutureField>x</SomeFutureField></Properties><Metadata><mode>0644</mode><hdi_isfolder>true</hdi_isfolder></Metadata></Blob></Blobs><NextMarker>2!100!MDAw--</NextMarker></EnumerationResults>"#;

    #[test]
    fn parses_listing_with_cpk_prefix_and_encoded_name() {
        let p = parse_list_blobs(REAL_CPK_LISTING.as_bytes()).unwrap();
        assert_eq!(p.prefixes, vec!["a/b/"]);
        assert_eq!(p.next_marker.as_deref(), Some("2!100!MDAw--"));
        assert_eq!(p.blobs.len(), 2);
        let b = &p.blobs[0];
        assert_eq!(b.name, "blockblob/0165899957958904339");
        assert_eq!(b.properties.etag, "\"0x8DA70795E20853E\"");
        assert_eq!(
            b.properties.cpk_sha256.as_deref(),
            Some("3QFFFpRA5+XANHqwwbT4yXDmrT/2JaLt/FKHjzhOdoE=")
        );
        assert!(b.properties.metadata_encrypted);
        assert!(b.properties.metadata.is_empty());
        assert!(b.properties.last_modified.is_some());
        assert_eq!(
            b.properties.content_type.as_deref(),
            Some("application/octet-stream")
        );
        let c = &p.blobs[1];
        assert_eq!(c.name, "a/\u{FFFE}.txt");
        assert_eq!(c.properties.content_length, 4);
        assert_eq!(
            c.properties.metadata.get("mode").map(String::as_str),
            Some("0644")
        );
        assert_eq!(
            c.properties
                .metadata
                .get("hdi_isfolder")
                .map(String::as_str),
            Some("true")
        );
        assert!(!c.properties.metadata_encrypted);
    }

    #[test]
    fn empty_next_marker_is_last_page() {
        let x = r#"<?xml version="1.0" encoding="utf-8"?><EnumerationResults ContainerName="c"><Blobs /><NextMarker /></EnumerationResults>"#;
        let p = parse_list_blobs(x.as_bytes()).unwrap();
        assert_eq!(p, ListPage::default());
        // Azurite pretty-prints with standalone="yes".
        let y = "<?xml version=\"1.0\" encoding=\"UTF-8\" standalone=\"yes\"?>\n<EnumerationResults>\n  <Blobs>\n    <BlobPrefix>\n      <Name>x/</Name>\n    </BlobPrefix>\n  </Blobs>\n  <NextMarker/>\n</EnumerationResults>";
        let p = parse_list_blobs(y.as_bytes()).unwrap();
        assert_eq!(p.prefixes, vec!["x/"]);
        assert!(p.next_marker.is_none());
    }

    #[test]
    fn parses_block_list_including_empty_form() {
        let x = r#"<?xml version="1.0" encoding="utf-8"?><BlockList><CommittedBlocks><Block><Name>YmxrLTAwMDE=</Name><Size>10</Size></Block></CommittedBlocks><UncommittedBlocks><Block><Name>YmxrLTAwMDI=</Name><Size>5</Size></Block></UncommittedBlocks></BlockList>"#;
        let b = parse_block_list(x.as_bytes()).unwrap();
        assert_eq!(
            b.committed,
            vec![BlockInfo {
                id: "YmxrLTAwMDE=".into(),
                size: 10
            }]
        );
        assert_eq!(
            b.uncommitted,
            vec![BlockInfo {
                id: "YmxrLTAwMDI=".into(),
                size: 5
            }]
        );
        let e =
            parse_block_list(b"<?xml version=\"1.0\"?><BlockList><CommittedBlocks/></BlockList>")
                .unwrap();
        assert!(e.committed.is_empty() && e.uncommitted.is_empty());
    }

    #[test]
    fn parses_error_and_mac_detail() {
        let x = "<?xml version=\"1.0\" encoding=\"utf-8\"?><Error><Code>AuthenticationFailed</Code><Message>Server failed to authenticate the request.\nRequestId:405923b2\nTime:2018-02-14T23:34:04.6840385Z</Message><AuthenticationErrorDetail>The MAC signature found in the HTTP request 'x' is not the same as any computed signature. Server used following string to sign: 'PUT\n\n'.</AuthenticationErrorDetail></Error>";
        let (code, msg) = parse_error(x.as_bytes()).unwrap();
        assert_eq!(code.as_deref(), Some("AuthenticationFailed"));
        assert_eq!(msg, "Server failed to authenticate the request.");
        assert!(auth_detail_is_mac_mismatch(x.as_bytes()));
        let skew = "<Error><Code>AuthenticationFailed</Code><Message>m</Message><AuthenticationErrorDetail>Request date header too old: 'Fri, 04 Oct 2019 18:02:12 GMT'</AuthenticationErrorDetail></Error>";
        assert!(!auth_detail_is_mac_mismatch(skew.as_bytes()));
    }

    #[test]
    fn builds_block_list_body() {
        let b = block_list_body(&[
            BlockRef::Committed("YQ==".into()),
            BlockRef::Uncommitted("Yg==".into()),
            BlockRef::Latest("Yw==".into()),
        ]);
        assert_eq!(b, "<?xml version=\"1.0\" encoding=\"utf-8\"?><BlockList><Committed>YQ==</Committed><Uncommitted>Yg==</Uncommitted><Latest>Yw==</Latest></BlockList>");
    }
}

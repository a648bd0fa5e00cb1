//! The Blob service operations (§4) with CPK enforcement (§3.7): this module
//! dispatches an operation to its resource's module (`container`, `list`,
//! `read`, `blob` for a blob as a whole, `blocks`, `from_url` for copies from
//! a source URL). They share `request` (what the headers say), `response`
//! (what every response carries) and `stored` (the way into the store);
//! those three import no handler, so the modules form no loop.

pub mod blob;
pub mod blocks;
pub mod container;
pub mod from_url;
pub mod list;
pub mod read;
pub mod request;
pub mod response;
pub mod stored;
pub mod tags;

use std::sync::Arc;

use crate::error::ApiError;
use crate::http::Req;
use crate::shared::Shared;

use response::R;

pub async fn dispatch(shared: &Arc<Shared>, op: &str, req: Req) -> R {
    match op {
        "CreateContainer" => container::create_container(shared, req),
        "GetContainerProperties" | "GetContainerMetadata" => {
            container::get_container_props(shared, req)
        }
        "DeleteContainer" => container::delete_container(shared, req),
        "SetContainerMetadata" => container::set_container_metadata(shared, req),
        "ListBlobs" => list::list_blobs(shared, req),
        "ListContainers" => list::list_containers(shared, req),
        "GetBlob" => read::get_blob(shared, req, false).await,
        "GetBlobProperties" => read::get_blob(shared, req, true).await,
        "GetBlobMetadata" => read::get_blob_metadata(shared, req),
        "PutBlob" => blob::put_blob(shared, req),
        "PutBlock" => blocks::put_block(shared, req),
        "PutBlockList" => blocks::put_block_list(shared, req),
        "GetBlockList" => blocks::get_block_list(shared, req),
        "DeleteBlob" => blob::delete_blob(shared, req),
        "SetBlobMetadata" => blob::set_blob_metadata(shared, req),
        "SetBlobProperties" => blob::set_blob_properties(shared, req),
        "CopyBlob" => blob::copy_blob(shared, req),
        "PutBlobFromUrl" => from_url::put_blob_from_url(shared, req).await,
        "PutBlockFromUrl" => from_url::put_block_from_url(shared, req).await,
        "SetBlobTags" => tags::set_blob_tags(shared, req),
        "GetBlobTags" => tags::get_blob_tags(shared, req),
        _ => Err(ApiError::unsupported()),
    }
}

#[cfg(test)]
mod tests {
    use super::container::valid_container_name;
    use super::list::xml_name;
    use super::request::is_identifier;

    #[test]
    fn names() {
        assert!(valid_container_name("abc"));
        assert!(valid_container_name("a-b-1"));
        assert!(!valid_container_name("a--b"));
        assert!(!valid_container_name("Abc"));
        assert!(!valid_container_name("ab"));
        assert!(!valid_container_name("-ab"));
        assert!(is_identifier("_a1"));
        assert!(!is_identifier("1a"));
        assert!(!is_identifier("a-b"));
        assert_eq!(xml_name("a&b"), "<Name>a&amp;b</Name>");
        assert_eq!(xml_name("a\u{1}"), "<Name Encoded=\"true\">a%01</Name>");
    }
}

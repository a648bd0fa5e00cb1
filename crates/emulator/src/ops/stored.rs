//! The handlers' way into the store: the addressed container and blob,
//! persisting a blob, and a received body stored (encrypted) as a block.

use std::sync::Arc;

use crate::cpk::{new_nonce, CpkKey};
use crate::error::ApiError;
use crate::http::Req;
use crate::shared::Shared;
use crate::store::{BlobEntry, Block, Committed, Container};

pub(crate) fn container_mut<'a>(
    st: &'a mut crate::store::State,
    req: &Req,
) -> Result<&'a mut Container, ApiError> {
    st.accounts
        .get_mut(&req.account)
        .and_then(|a| a.containers.get_mut(&req.container))
        .ok_or_else(ApiError::container_not_found)
}

/// Clone the committed version of the addressed blob (lock held only for the lookup).
pub(crate) fn committed_of(shared: &Shared, req: &Req) -> Result<Arc<Committed>, ApiError> {
    let mut st = shared.state.lock().unwrap();
    let c = container_mut(&mut st, req)?;
    c.blobs
        .get(&req.blob)
        .and_then(|e| e.committed.clone())
        .ok_or_else(ApiError::blob_not_found)
}

pub(crate) fn persist_blob(
    shared: &Shared,
    req: &Req,
    entry: Option<&BlobEntry>,
) -> Result<(), ApiError> {
    shared
        .disk
        .save_blob(&req.account, &req.container, &req.blob, entry)
        .map_err(|e| {
            tracing::error!("persist: {e}");
            ApiError::internal()
        })
}

/// Encrypt (if keyed and not already encrypted on receipt, see `Req::body_encrypted`)
/// and store a received body as a block.
pub(crate) fn make_block(
    shared: &Shared,
    mut data: bytes::BytesMut,
    encrypted: Option<([u8; 16], String)>,
    key: Option<&CpkKey>,
) -> Result<Arc<Block>, ApiError> {
    let len = data.len() as u64;
    let nonce = match (key, encrypted) {
        (Some(k), Some((n, sha))) if sha == k.sha => Some(n),
        (Some(k), None) => {
            let n = new_nonce();
            k.apply(&n, 0, &mut data);
            Some(n)
        }
        (None, None) => None,
        _ => {
            tracing::error!("body encrypted on receipt with a key other than the request's");
            return Err(ApiError::internal());
        }
    };
    let stored = shared.disk.store_block(data.freeze()).map_err(|e| {
        tracing::error!("store block: {e}");
        ApiError::internal()
    })?;
    Ok(Arc::new(Block {
        data: stored,
        len,
        nonce,
        key_sha: key.map(|k| k.sha.clone()),
    }))
}

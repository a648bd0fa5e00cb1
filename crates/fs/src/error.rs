//! The one place where failures become errno values. Every error keeps its
//! cause (Azure code and request id included) for the log line.

use cpkfs_blob::BlobError;

#[derive(Debug, thiserror::Error)]
pub enum FsError {
    #[error("no such file or directory")]
    NotFound,
    #[error("already exists")]
    Exists,
    #[error("directory not empty")]
    NotEmpty,
    #[error("not a directory")]
    NotDir,
    #[error("is a directory")]
    IsDir,
    #[error("invalid name {0:?}: {1}")]
    InvalidName(String, &'static str),
    #[error("name too long")]
    NameTooLong,
    #[error("{path}: encrypted with a customer-provided key this mount does not hold (key SHA-256 {sha256})")]
    ForeignKey { path: String, sha256: String },
    #[error("{0}")]
    Stale(String),
    #[error("not supported: {0}")]
    Unsupported(&'static str),
    #[error("invalid argument: {0}")]
    Invalid(&'static str),
    #[error("bad file handle")]
    BadHandle,
    #[error("read-only file system")]
    ReadOnly,
    #[error("file too large: {0}")]
    TooLarge(String),
    #[error("{path}: another writer changed it since it was opened; {}", match saved_as { Some(s) => format!("this version was saved as {s}"), None => "this version could not be kept (blocks already staged under the name)".to_string() })]
    Conflict {
        path: String,
        saved_as: Option<String>,
    },
    #[error("an earlier upload of this file failed: {0}")]
    Failed(String),
    #[error("{0}")]
    Blob(#[from] BlobError),
}

impl FsError {
    pub fn errno(&self) -> i32 {
        use libc::*;
        match self {
            FsError::NotFound => ENOENT,
            FsError::Exists => EEXIST,
            FsError::NotEmpty => ENOTEMPTY,
            FsError::NotDir => ENOTDIR,
            FsError::IsDir => EISDIR,
            FsError::InvalidName(..) => EINVAL,
            FsError::NameTooLong => ENAMETOOLONG,
            FsError::ForeignKey { .. } => EACCES,
            FsError::Stale(_) => ESTALE,
            FsError::Unsupported(_) => ENOTSUP,
            FsError::Invalid(_) => EINVAL,
            FsError::BadHandle => EBADF,
            FsError::ReadOnly => EROFS,
            FsError::TooLarge(_) => EFBIG,
            FsError::Failed(_) | FsError::Conflict { .. } => EIO,
            FsError::Blob(e) => blob_errno(e),
        }
    }

    /// The blob was replaced while it was read under a pinned ETag: a copy's
    /// source (412 `SourceConditionNotMet`), a pinned range read (412
    /// `ConditionNotMet`), or a download that saw the ETag move.
    pub fn is_source_changed(&self) -> bool {
        match self {
            FsError::Blob(BlobError::Service(s)) => s.status == 412,
            FsError::Blob(BlobError::Changed { .. }) => true,
            _ => false,
        }
    }

    /// Expected outcomes (a lookup miss) are not worth a warning.
    pub fn is_quiet(&self) -> bool {
        matches!(
            self,
            FsError::NotFound | FsError::Exists | FsError::NotEmpty
        )
    }
}

fn blob_errno(e: &BlobError) -> i32 {
    use libc::*;
    match e {
        BlobError::Service(s) => match (s.status, s.code()) {
            (404, _) => ENOENT,
            (401, _) | (403, _) => EACCES,
            (409, "BlobUsesCustomerSpecifiedEncryption")
            | (409, "BlobCustomerSpecifiedEncryptionMismatch")
            | (409, "BlobDoesNotUseCustomerSpecifiedEncryption")
            | (409, "CannotVerifyCopySource") => EACCES,
            (409, "BlobAlreadyExists") => EEXIST,
            (409, "BlockCountExceedsLimit") | (413, _) | (400, "BlockListTooLong") => EFBIG,
            (412, _) => ESTALE,
            (416, _) => EINVAL,
            (400, "AccountRequiresHttps") => EACCES,
            _ => EIO,
        },
        BlobError::Changed { .. } => ESTALE,
        BlobError::CpkOverHttp => EACCES,
        BlobError::Transport { .. } | BlobError::Protocol { .. } | BlobError::Config(_) => EIO,
    }
}

pub type FsResult<T> = Result<T, FsError>;

#[cfg(test)]
mod tests {
    use super::*;
    use cpkfs_blob::ServiceError;

    fn svc(status: u16, code: &str) -> FsError {
        FsError::Blob(BlobError::Service(Box::new(ServiceError {
            operation: "Op",
            resource: "c/x".into(),
            status,
            code: Some(code.into()),
            message: String::new(),
            request_id: Some("r".into()),
            mac_mismatch: false,
            attempts: 1,
        })))
    }

    #[test]
    fn errno_table() {
        assert_eq!(svc(404, "BlobNotFound").errno(), libc::ENOENT);
        assert_eq!(svc(403, "AuthenticationFailed").errno(), libc::EACCES);
        assert_eq!(
            svc(409, "BlobCustomerSpecifiedEncryptionMismatch").errno(),
            libc::EACCES
        );
        assert_eq!(svc(412, "ConditionNotMet").errno(), libc::ESTALE);
        assert_eq!(svc(409, "BlockCountExceedsLimit").errno(), libc::EFBIG);
        assert_eq!(svc(503, "ServerBusy").errno(), libc::EIO);
        assert_eq!(FsError::NotEmpty.errno(), libc::ENOTEMPTY);
        assert_eq!(
            FsError::ForeignKey {
                path: "a".into(),
                sha256: "h".into()
            }
            .errno(),
            libc::EACCES
        );
        let s = svc(409, "BlobCustomerSpecifiedEncryptionMismatch").to_string();
        assert!(s.contains("request id r"), "{s}");
    }
}

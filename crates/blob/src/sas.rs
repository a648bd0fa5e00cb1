//! Generating SAS tokens from an account key (reference §2.8). The client
//! authenticates with a SAS by appending it; generating one is needed for tests,
//! for `cpkfs` users who want to hand out a token, and for copy sources.

use super::credentials::AccountKey;
use percent_encoding::{utf8_percent_encode, AsciiSet, NON_ALPHANUMERIC};

const QUERY_VALUE: &AsciiSet = &NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'_')
    .remove(b'.')
    .remove(b'~');

fn enc(v: &str) -> String {
    utf8_percent_encode(v, QUERY_VALUE).to_string()
}

/// Fields of an account SAS (sv ≥ 2020-12-06 layout).
#[derive(Debug, Clone)]
pub struct AccountSas<'a> {
    pub account: &'a str,
    pub permissions: &'a str,
    pub services: &'a str,
    pub resource_types: &'a str,
    pub start: Option<&'a str>,
    pub expiry: &'a str,
    pub ip: Option<&'a str>,
    pub protocol: &'a str,
    pub version: &'a str,
}

impl AccountSas<'_> {
    pub fn string_to_sign(&self) -> String {
        format!(
            "{}\n{}\n{}\n{}\n{}\n{}\n{}\n{}\n{}\n\n",
            self.account,
            self.permissions,
            self.services,
            self.resource_types,
            self.start.unwrap_or(""),
            self.expiry,
            self.ip.unwrap_or(""),
            self.protocol,
            self.version
        )
    }

    /// The token, in the parameter order the official SDK emits.
    pub fn token(&self, key: &AccountKey) -> String {
        let sig = key.sign(&self.string_to_sign());
        let mut parts = vec![];
        if let Some(st) = self.start {
            parts.push(format!("st={}", enc(st)));
        }
        parts.push(format!("se={}", enc(self.expiry)));
        parts.push(format!("sp={}", self.permissions));
        parts.push(format!("spr={}", enc(self.protocol)));
        parts.push(format!("sv={}", self.version));
        parts.push(format!("ss={}", self.services));
        parts.push(format!("srt={}", self.resource_types));
        if let Some(ip) = self.ip {
            parts.push(format!("sip={}", enc(ip)));
        }
        parts.push(format!("sig={}", enc(&sig)));
        parts.join("&")
    }
}

/// Fields of a blob or container service SAS signed with the account key.
#[derive(Debug, Clone)]
pub struct ServiceSas<'a> {
    pub account: &'a str,
    pub container: &'a str,
    /// None for a container SAS (`sr=c`).
    pub blob: Option<&'a str>,
    pub permissions: &'a str,
    pub start: Option<&'a str>,
    pub expiry: &'a str,
    pub protocol: &'a str,
    pub version: &'a str,
}

impl ServiceSas<'_> {
    fn resource(&self) -> &'static str {
        if self.blob.is_some() {
            "b"
        } else {
            "c"
        }
    }

    pub fn string_to_sign(&self) -> String {
        let canonical = match self.blob {
            Some(b) => format!("/blob/{}/{}/{}", self.account, self.container, b),
            None => format!("/blob/{}/{}", self.account, self.container),
        };
        // sp st se resource si sip spr sv sr snapshot ses rscc rscd rsce rscl rsct
        [
            self.permissions,
            self.start.unwrap_or(""),
            self.expiry,
            &canonical,
            "",
            "",
            self.protocol,
            self.version,
            self.resource(),
            "",
            "",
            "",
            "",
            "",
            "",
            "",
        ]
        .join("\n")
    }

    pub fn token(&self, key: &AccountKey) -> String {
        let sig = key.sign(&self.string_to_sign());
        let mut parts = vec![];
        if let Some(st) = self.start {
            parts.push(format!("st={}", enc(st)));
        }
        parts.push(format!("se={}", enc(self.expiry)));
        parts.push(format!("sp={}", self.permissions));
        parts.push(format!("spr={}", enc(self.protocol)));
        parts.push(format!("sv={}", self.version));
        parts.push(format!("sr={}", self.resource()));
        parts.push(format!("sig={}", enc(&sig)));
        parts.join("&")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    const KEY: &str =
        "AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8gISIjJCUmJygpKissLS4vMDEyMzQ1Njc4OTo7PD0+Pw==";

    #[test]
    fn account_sas_vector() {
        let sas = AccountSas {
            account: "myaccount",
            permissions: "rwdlac",
            services: "b",
            resource_types: "sco",
            start: Some("2024-03-01T00:00:00Z"),
            expiry: "2024-03-02T00:00:00Z",
            ip: None,
            protocol: "https",
            version: "2021-08-06",
        };
        assert_eq!(
            sas.string_to_sign(),
            "myaccount\nrwdlac\nb\nsco\n2024-03-01T00:00:00Z\n2024-03-02T00:00:00Z\n\nhttps\n2021-08-06\n\n"
        );
        let key = AccountKey::from_base64(KEY).unwrap();
        assert_eq!(
            sas.token(&key),
            "st=2024-03-01T00%3A00%3A00Z&se=2024-03-02T00%3A00%3A00Z&sp=rwdlac&spr=https&sv=2021-08-06&ss=b&srt=sco&sig=1H5YLM7k8skMGSdLsZmQQGr4IBEqfaTzrF4lwFqCp1c%3D"
        );
    }

    #[test]
    fn blob_service_sas_vector() {
        let sas = ServiceSas {
            account: "myaccount",
            container: "mycontainer",
            blob: Some("dir/file.txt"),
            permissions: "r",
            start: Some("2024-03-01T00:00:00Z"),
            expiry: "2024-03-02T00:00:00Z",
            protocol: "https",
            version: "2021-08-06",
        };
        assert_eq!(
            sas.string_to_sign(),
            "r\n2024-03-01T00:00:00Z\n2024-03-02T00:00:00Z\n/blob/myaccount/mycontainer/dir/file.txt\n\n\nhttps\n2021-08-06\nb\n\n\n\n\n\n\n"
        );
        let key = AccountKey::from_base64(KEY).unwrap();
        assert_eq!(
            key.sign(&sas.string_to_sign()),
            "39wZbSWKDCsSmJ+LnBNddudSIJZAT+oCXDFwljf6Eq4="
        );
    }
}

//! Azure's CRC-64 (= CRC-64/NVME), as sent in `x-ms-content-crc64`.

use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine;

pub fn crc64(data: &[u8]) -> u64 {
    let mut d = crc64fast_nvme::Digest::new();
    d.write(data);
    d.sum64()
}

/// The header form: 8 bytes little-endian, base64.
pub fn crc64_header(data: &[u8]) -> String {
    B64.encode(crc64(data).to_le_bytes())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reference_vectors() {
        assert_eq!(crc64(b""), 0);
        assert_eq!(crc64_header(b""), "AAAAAAAAAAA=");
        assert_eq!(crc64(b"123456789"), 0xAE8B14860A799888);
        assert_eq!(crc64_header(b"123456789"), "iJh5CoYUi64=");
        assert_eq!(crc64(b"Hello World"), 0x659632CB7E4BE261);
        assert_eq!(crc64_header(b"Hello World"), "YeJLfssylmU=");
        assert_eq!(crc64_header(b"a"), "PPzLtEWEL4w=");
        assert_eq!(
            crc64(b"The quick brown fox jumps over the lazy dog"),
            0xD76C54054954C143
        );
        assert_eq!(crc64_header(b"AAAAAAAAAA"), "gNq19bVGDcs=");
        assert_eq!(crc64_header(b"BBBBB"), "92gHawvjeks=");
        let mib: Vec<u8> = (0..1_048_576u32).map(|i| (i % 251) as u8).collect();
        assert_eq!(crc64(&mib), 0x8821D9F150FEC9FC);
        assert_eq!(crc64_header(&mib), "/Mn+UPHZIYg=");
    }
}

//! How values leave the process (Redis entries, messages between nodes): bincode 2 behind a
//! format byte, so bytes written by another version are told apart instead of misread, and read
//! back without a panic and without letting a damaged length allocate more than `LIMIT` bytes.

/// The format byte this version writes and reads.
pub const FORMAT: u8 = 1;

pub fn encode<T: serde::Serialize>(value: &T) -> Vec<u8> {
    encode_as(FORMAT, value)
}

/// Behind another format byte: for a value whose layout changed (job records are format 2),
/// so that a reader tells the layouts apart and reads both.
pub fn encode_as<T: serde::Serialize>(format: u8, value: &T) -> Vec<u8> {
    let mut out = vec![format];
    // Encoding a plain struct into a Vec cannot fail; an empty body would be refused on read.
    if let Ok(body) = bincode::serde::encode_to_vec(value, bincode::config::standard()) {
        out.extend(body);
    }
    out
}

/// The value in `bytes`, or why it cannot be read.
pub fn decode<T: serde::de::DeserializeOwned, const LIMIT: usize>(
    bytes: &[u8],
) -> Result<T, String> {
    decode_as::<T, LIMIT>(FORMAT, bytes)
}

/// The value in `bytes` if they carry `format`.
pub fn decode_as<T: serde::de::DeserializeOwned, const LIMIT: usize>(
    format: u8,
    bytes: &[u8],
) -> Result<T, String> {
    match bytes.split_first() {
        Some((&f, body)) if f == format => {
            let config = bincode::config::standard().with_limit::<LIMIT>();
            let (v, used) =
                bincode::serde::decode_from_slice(body, config).map_err(|e| e.to_string())?;
            if used != body.len() {
                return Err(format!("{} trailing bytes", body.len() - used));
            }
            Ok(v)
        }
        Some((v, _)) => Err(format!("format version {v}, this node reads {format}")),
        None => Err("empty value".into()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_refusals() {
        let v = (7u32, "seven".to_string());
        let bytes = encode(&v);
        assert_eq!(decode::<(u32, String), 1024>(&bytes), Ok(v));
        let mut longer = bytes.clone();
        longer.push(0);
        assert!(decode::<(u32, String), 1024>(&longer).is_err());
        assert!(decode::<(u32, String), 1024>(&[2, 7]).is_err());
        assert!(decode::<(u32, String), 1024>(&[]).is_err());
        // A length far beyond the limit is refused, not allocated.
        assert!(decode::<Vec<u8>, 16>(&encode(&vec![0u8; 64])).is_err());
    }
}

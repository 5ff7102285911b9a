//! EBML variable-size integers (RFC 8794 section 4).

/// Largest value a size VINT can carry; the all-ones pattern means "unknown".
pub const MAX_SIZE: u64 = (1 << 56) - 2;

/// A malformed VINT: a leading zero byte or an ID wider than four bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct InvalidVint;

/// Reads an element ID (marker bit kept). `Ok(None)` means more bytes are needed.
pub fn read_id(buf: &[u8]) -> Result<Option<(u32, usize)>, InvalidVint> {
    let Some(&first) = buf.first() else {
        return Ok(None);
    };
    let len = first.leading_zeros() as usize + 1;
    if len > 4 {
        return Err(InvalidVint);
    }
    if buf.len() < len {
        return Ok(None);
    }
    let id = buf[..len]
        .iter()
        .fold(0u32, |acc, &b| (acc << 8) | b as u32);
    Ok(Some((id, len)))
}

/// Reads an element data size. The inner `Option` is `None` for the
/// reserved all-ones "unknown size" value.
pub fn read_size(buf: &[u8]) -> Result<Option<(Option<u64>, usize)>, InvalidVint> {
    let Some(&first) = buf.first() else {
        return Ok(None);
    };
    let len = first.leading_zeros() as usize + 1;
    if len > 8 {
        return Err(InvalidVint);
    }
    if buf.len() < len {
        return Ok(None);
    }
    let mut value = (first as u64) & (0xFF >> len);
    for &b in &buf[1..len] {
        value = (value << 8) | b as u64;
    }
    let all_ones = (1u64 << (7 * len)) - 1;
    Ok(Some((
        if value == all_ones { None } else { Some(value) },
        len,
    )))
}

/// Reads a block's track number (a size-style VINT without the reserved value).
pub fn read_track(buf: &[u8]) -> Result<Option<(u64, usize)>, InvalidVint> {
    match read_size(buf)? {
        None => Ok(None),
        Some((Some(v), n)) => Ok(Some((v, n))),
        Some((None, _)) => Err(InvalidVint),
    }
}

pub fn write_id(out: &mut Vec<u8>, id: u32) {
    let bytes = id.to_be_bytes();
    let skip = (id.leading_zeros() / 8) as usize;
    out.extend_from_slice(&bytes[skip.min(3)..]);
}

/// Writes `size` in the shortest VINT that does not collide with "unknown".
pub fn write_size(out: &mut Vec<u8>, size: u64) {
    let mut len = 1;
    while len < 8 && size >= (1u64 << (7 * len)) - 1 {
        len += 1;
    }
    write_size_len(out, size, len);
}

/// Writes `size` as a VINT of exactly `len` bytes (1..=8).
pub fn write_size_len(out: &mut Vec<u8>, size: u64, len: usize) {
    debug_assert!((1..=8).contains(&len));
    let marked = size | (1u64 << (7 * len));
    out.extend_from_slice(&marked.to_be_bytes()[8 - len..]);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_round_trip_at_every_width_boundary() {
        for len in 1..=8u32 {
            for v in [0u64, (1 << (7 * len)) - 2, (1 << (7 * len)).min(MAX_SIZE)] {
                let mut out = Vec::new();
                write_size(&mut out, v);
                let (got, n) = read_size(&out).unwrap().unwrap();
                assert_eq!(got, Some(v));
                assert_eq!(n, out.len());
            }
        }
    }

    #[test]
    fn all_ones_is_unknown_size() {
        assert_eq!(read_size(&[0xFF]).unwrap(), Some((None, 1)));
        let eight = [0x01, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF];
        assert_eq!(read_size(&eight).unwrap(), Some((None, 8)));
    }

    #[test]
    fn ids_keep_their_marker() {
        assert_eq!(
            read_id(&[0x1F, 0x43, 0xB6, 0x75]).unwrap(),
            Some((0x1F43B675, 4))
        );
        assert_eq!(read_id(&[0xA3]).unwrap(), Some((0xA3, 1)));
        assert_eq!(read_id(&[0x00]), Err(InvalidVint));
        let mut out = Vec::new();
        write_id(&mut out, 0x1A45DFA3);
        write_id(&mut out, 0xE7);
        assert_eq!(out, [0x1A, 0x45, 0xDF, 0xA3, 0xE7]);
    }

    #[test]
    fn short_input_asks_for_more() {
        assert_eq!(read_size(&[0x40]).unwrap(), None);
        assert_eq!(read_id(&[0x1A, 0x45]).unwrap(), None);
    }
}

//! GPT-2's byte-to-unicode mapping, the form in which GGUF stores byte-level BPE tokens.
//!
//! Printable Latin-1 bytes (`!`..`~`, `¡`..`¬`, `®`..`ÿ`) stand for themselves; the other 68 bytes
//! are shifted to U+0100.. in byte order, so every token becomes a printable string.

/// Whether byte `b` is one of the 188 bytes that GPT-2 maps to the same code point.
fn is_self_mapped(b: u8) -> bool {
    matches!(b, b'!'..=b'~' | 0xA1..=0xAC | 0xAE..=0xFF)
}

/// Byte → char table, built once per call site (cheap: 256 entries).
fn byte_to_char_table() -> [char; 256] {
    let mut table = ['\0'; 256];
    let mut shifted = 0u32;
    for b in 0..=255u8 {
        table[b as usize] = if is_self_mapped(b) {
            char::from(b)
        } else {
            shifted += 1;
            char::from_u32(255 + shifted).expect("U+0100..U+0143 are chars")
        };
    }
    table
}

/// Highest code point the mapping produces (U+0143) plus one.
const CHAR_LIMIT: usize = 256 + 68;

/// Char → byte table; `None` for chars outside the mapping.
fn char_to_byte_table() -> [Option<u8>; CHAR_LIMIT] {
    let mut table = [None; CHAR_LIMIT];
    for (b, c) in byte_to_char_table().into_iter().enumerate() {
        table[c as usize] = Some(b as u8);
    }
    table
}

/// Encodes raw token bytes into their GPT-2 unicode form.
pub fn bytes_to_unicode(bytes: &[u8]) -> String {
    let table = byte_to_char_table();
    bytes.iter().map(|&b| table[b as usize]).collect()
}

/// Decodes GGUF token strings back to raw bytes, reusing one lookup table for all of them.
pub struct UnicodeToBytes {
    table: [Option<u8>; CHAR_LIMIT],
}

impl UnicodeToBytes {
    pub fn new() -> Self {
        UnicodeToBytes {
            table: char_to_byte_table(),
        }
    }

    /// Appends the bytes of `s` to `out`; `None` if `s` has a char outside the mapping.
    pub fn decode_into(&self, s: &str, out: &mut Vec<u8>) -> Option<()> {
        for c in s.chars() {
            out.push(*self.table.get(c as usize)?.as_ref()?);
        }
        Some(())
    }
}

impl Default for UnicodeToBytes {
    fn default() -> Self {
        Self::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn all_256_bytes_round_trip() {
        let all: Vec<u8> = (0..=255).collect();
        let s = bytes_to_unicode(&all);
        assert_eq!(s.chars().count(), 256);
        let mut back = Vec::new();
        UnicodeToBytes::new().decode_into(&s, &mut back).unwrap();
        assert_eq!(back, all);
    }

    #[test]
    fn known_gpt2_forms() {
        // Space is 'Ġ' (U+0120) and newline 'Ċ' (U+010A) in every GPT-2 style vocabulary.
        assert_eq!(bytes_to_unicode(b" the\n"), "\u{120}the\u{10A}");
        assert_eq!(
            bytes_to_unicode(&[0x00, 0xAD, 0x7F]),
            "\u{100}\u{143}\u{121}"
        );
    }

    #[test]
    fn rejects_chars_outside_mapping() {
        let mut out = Vec::new();
        assert!(UnicodeToBytes::new().decode_into(" ", &mut out).is_none());
        assert!(UnicodeToBytes::new().decode_into("中", &mut out).is_none());
    }
}

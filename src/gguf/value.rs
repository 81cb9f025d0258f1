//! GGUF metadata values: the typed values of the key/value section.

use std::fmt;

/// Arrays may nest; both reader and writer refuse deeper nesting than this, so a hostile
/// file cannot make the parser recurse without bound.
pub const MAX_ARRAY_DEPTH: usize = 8;

/// One metadata value. Variants follow the GGUF value type ids (see [`MetadataValue::type_id`]).
#[derive(Clone, Debug, PartialEq)]
pub enum MetadataValue {
    U8(u8),
    I8(i8),
    U16(u16),
    I16(i16),
    U32(u32),
    I32(i32),
    F32(f32),
    Bool(bool),
    String(String),
    /// GGUF arrays are homogeneous: every element has the same type (nested arrays may differ).
    Array(Vec<MetadataValue>),
    U64(u64),
    I64(i64),
    F64(f64),
}

/// GGUF value type ids, as stored in the file.
pub(crate) mod type_id {
    pub const U8: u32 = 0;
    pub const I8: u32 = 1;
    pub const U16: u32 = 2;
    pub const I16: u32 = 3;
    pub const U32: u32 = 4;
    pub const I32: u32 = 5;
    pub const F32: u32 = 6;
    pub const BOOL: u32 = 7;
    pub const STRING: u32 = 8;
    pub const ARRAY: u32 = 9;
    pub const U64: u32 = 10;
    pub const I64: u32 = 11;
    pub const F64: u32 = 12;
}

impl MetadataValue {
    /// Any integer that is not negative.
    pub fn as_u64(&self) -> Option<u64> {
        use MetadataValue::*;
        match *self {
            U8(v) => Some(v.into()),
            U16(v) => Some(v.into()),
            U32(v) => Some(v.into()),
            U64(v) => Some(v),
            I8(v) => u64::try_from(v).ok(),
            I16(v) => u64::try_from(v).ok(),
            I32(v) => u64::try_from(v).ok(),
            I64(v) => u64::try_from(v).ok(),
            _ => None,
        }
    }

    /// Any integer that fits in an `i64`.
    pub fn as_i64(&self) -> Option<i64> {
        use MetadataValue::*;
        match *self {
            U8(v) => Some(v.into()),
            U16(v) => Some(v.into()),
            U32(v) => Some(v.into()),
            U64(v) => i64::try_from(v).ok(),
            I8(v) => Some(v.into()),
            I16(v) => Some(v.into()),
            I32(v) => Some(v.into()),
            I64(v) => Some(v),
            _ => None,
        }
    }

    /// Any number, integer or float.
    pub fn as_f64(&self) -> Option<f64> {
        match *self {
            MetadataValue::F32(v) => Some(v.into()),
            MetadataValue::F64(v) => Some(v),
            MetadataValue::U64(v) => Some(v as f64),
            MetadataValue::I64(v) => Some(v as f64),
            _ => self.as_i64().map(|v| v as f64),
        }
    }

    pub fn as_str(&self) -> Option<&str> {
        match self {
            MetadataValue::String(s) => Some(s),
            _ => None,
        }
    }

    pub fn as_bool(&self) -> Option<bool> {
        match *self {
            MetadataValue::Bool(b) => Some(b),
            _ => None,
        }
    }

    pub fn as_array(&self) -> Option<&[MetadataValue]> {
        match self {
            MetadataValue::Array(a) => Some(a),
            _ => None,
        }
    }

    /// The GGUF type id of this value.
    pub fn type_id(&self) -> u32 {
        use MetadataValue::*;
        match self {
            U8(_) => type_id::U8,
            I8(_) => type_id::I8,
            U16(_) => type_id::U16,
            I16(_) => type_id::I16,
            U32(_) => type_id::U32,
            I32(_) => type_id::I32,
            F32(_) => type_id::F32,
            Bool(_) => type_id::BOOL,
            String(_) => type_id::STRING,
            Array(_) => type_id::ARRAY,
            U64(_) => type_id::U64,
            I64(_) => type_id::I64,
            F64(_) => type_id::F64,
        }
    }

    /// Short type name for error messages (`u32`, `string`, `array`...).
    pub fn type_name(&self) -> &'static str {
        type_name_of(self.type_id())
    }

    /// The type and a short rendering of the value, for error messages.
    pub(crate) fn describe(&self) -> String {
        format!("{} {self}", self.type_name())
    }
}

/// Shows scalars as values, strings quoted, and long arrays (tokenizer vocabularies) shortened.
impl fmt::Display for MetadataValue {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        use MetadataValue::*;
        match self {
            U8(v) => write!(f, "{v}"),
            I8(v) => write!(f, "{v}"),
            U16(v) => write!(f, "{v}"),
            I16(v) => write!(f, "{v}"),
            U32(v) => write!(f, "{v}"),
            I32(v) => write!(f, "{v}"),
            F32(v) => write!(f, "{v}"),
            Bool(v) => write!(f, "{v}"),
            U64(v) => write!(f, "{v}"),
            I64(v) => write!(f, "{v}"),
            F64(v) => write!(f, "{v}"),
            String(s) if s.chars().count() > 60 => {
                let head: std::string::String = s.chars().take(60).collect();
                write!(f, "{head:?}...")
            }
            String(s) => write!(f, "{s:?}"),
            Array(a) => fmt_array(f, a),
        }
    }
}

fn fmt_array(f: &mut fmt::Formatter<'_>, a: &[MetadataValue]) -> fmt::Result {
    const SHOWN: usize = 6;
    f.write_str("[")?;
    for (i, v) in a.iter().take(SHOWN).enumerate() {
        if i > 0 {
            f.write_str(", ")?;
        }
        write!(f, "{v}")?;
    }
    if a.len() > SHOWN {
        write!(f, ", ... ({} elements)", a.len())?;
    }
    f.write_str("]")
}

/// Name of a GGUF value type id (`"unknown"` for ids outside the format).
pub(crate) fn type_name_of(id: u32) -> &'static str {
    match id {
        type_id::U8 => "u8",
        type_id::I8 => "i8",
        type_id::U16 => "u16",
        type_id::I16 => "i16",
        type_id::U32 => "u32",
        type_id::I32 => "i32",
        type_id::F32 => "f32",
        type_id::BOOL => "bool",
        type_id::STRING => "string",
        type_id::ARRAY => "array",
        type_id::U64 => "u64",
        type_id::I64 => "i64",
        type_id::F64 => "f64",
        _ => "unknown",
    }
}

macro_rules! impl_from {
    ($($t:ty => $v:ident),* $(,)?) => {
        $(impl From<$t> for MetadataValue {
            fn from(v: $t) -> Self {
                MetadataValue::$v(v)
            }
        })*
    };
}

impl_from!(u8 => U8, i8 => I8, u16 => U16, i16 => I16, u32 => U32, i32 => I32, f32 => F32,
    bool => Bool, String => String, u64 => U64, i64 => I64, f64 => F64);

impl From<&str> for MetadataValue {
    fn from(v: &str) -> Self {
        MetadataValue::String(v.to_owned())
    }
}

impl<T: Into<MetadataValue>> From<Vec<T>> for MetadataValue {
    fn from(v: Vec<T>) -> Self {
        MetadataValue::Array(v.into_iter().map(Into::into).collect())
    }
}

#[cfg(test)]
mod tests {
    use super::MetadataValue as V;

    #[test]
    fn integer_conversions_respect_sign_and_range() {
        assert_eq!(V::I32(-1).as_u64(), None);
        assert_eq!(V::I32(7).as_u64(), Some(7));
        assert_eq!(V::U64(u64::MAX).as_i64(), None);
        assert_eq!(V::U8(3).as_f64(), Some(3.0));
        assert_eq!(V::F32(0.5).as_u64(), None);
        assert_eq!(V::Bool(true).as_u64(), None);
        assert_eq!(V::String("x".into()).as_f64(), None);
    }

    #[test]
    fn from_vec_builds_arrays() {
        let v: V = vec!["a", "b"].into();
        assert_eq!(v.as_array().map(|a| a.len()), Some(2));
        assert_eq!(v.type_name(), "array");
        assert_eq!(v.to_string(), r#"["a", "b"]"#);
        let long: V = (0..100u32).collect::<Vec<_>>().into();
        assert_eq!(long.to_string(), "[0, 1, 2, 3, 4, 5, ... (100 elements)]");
    }
}
